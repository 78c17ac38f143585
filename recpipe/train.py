"""Train one model as of a time from the stored inputs; register the run.

A run is identified by (model, as_of): training the same night again replaces that
run's artifact and metrics (same run_id) instead of adding a second run.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe import artifacts
from recpipe.config import PipelineParams, Settings

log = logging.getLogger(__name__)

MODELS = ("autoint", "gru4rec", "popularity")
TRAINED_MODELS = ("autoint", "gru4rec")


def model_config(model: str, overrides: dict | None = None, epochs: int | None = None):
    """The model's default config with overrides (and an epochs override) applied."""
    changes = dict(overrides or {})
    if epochs is not None:
        changes["epochs"] = int(epochs)
    if model == "autoint":
        from recpipe.models.autoint import DEFAULT_CONFIG, AutoIntConfig

        return AutoIntConfig.from_dict({**DEFAULT_CONFIG.to_dict(), **changes})
    if model == "gru4rec":
        from recpipe.models.gru4rec import DEFAULT_CONFIG, GRU4RecConfig

        return GRU4RecConfig.from_dict({**DEFAULT_CONFIG.to_dict(), **changes})
    raise ValueError(f"unknown trainable model {model!r}; expected one of {TRAINED_MODELS}")


def upsert_run(engine: Engine, settings: Settings, model: str, as_of: datetime, *, config: dict,
               data_stats: dict, metrics: dict, artifact: artifacts.Artifact | None) -> int:
    """Insert or replace the run of (model, as_of) as a fresh candidate."""
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO model_runs (model, as_of, config, data_stats, metrics, artifact_path, artifact_sha256)"
                " VALUES (:model, :as_of, CAST(:config AS jsonb), CAST(:stats AS jsonb), CAST(:metrics AS jsonb),"
                "         :path, :sha)"
                " ON CONFLICT (model, as_of) DO UPDATE SET config = EXCLUDED.config,"
                "   data_stats = EXCLUDED.data_stats, metrics = EXCLUDED.metrics,"
                "   artifact_path = EXCLUDED.artifact_path, artifact_sha256 = EXCLUDED.artifact_sha256,"
                "   status = 'candidate', gate_reasons = '[]', created_at = now(), decided_at = NULL"
                " RETURNING run_id"
            ),
            {
                "model": model, "as_of": as_of, "config": json.dumps(config, default=str),
                "stats": json.dumps(data_stats, default=str), "metrics": json.dumps(metrics, default=str),
                "path": str(artifact.path.relative_to(settings.home.resolve())) if artifact else None,
                "sha": artifact.sha256 if artifact else None,
            },
        ).scalar_one()


def get_run(engine: Engine, run_id: int) -> dict:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM model_runs WHERE run_id = :r"), {"r": run_id}).mappings().first()
    if row is None:
        raise LookupError(f"no model run {run_id}")
    return dict(row)


def train_autoint(engine: Engine, settings: Settings, as_of: datetime, train_until: datetime, *,
                  encodings_id: int | None = None, overrides: dict | None = None, epochs: int | None = None) -> int:
    from recpipe.db import read_movies, read_ratings, read_users
    from recpipe.features import derive_fields, load_encodings
    from recpipe.models.autoint import fit_autoint, save_model

    overrides = dict(overrides or {})
    negatives = int(overrides.pop("negatives_per_rating", AUTOINT_NEGATIVES_PER_RATING))
    config = model_config("autoint", overrides, epochs)
    encoders = load_encodings(engine, settings, encodings_id, as_of=train_until)
    ratings = read_ratings(engine, before=train_until)
    if ratings.empty:
        raise ValueError(f"no ratings before {train_until}: nothing to train AutoInt+ on")
    movies = read_movies(engine)
    examples = with_sampled_negatives(ratings, movies["movie_id"].to_numpy(), negatives, config.seed)
    frame = derive_fields(examples, movies, read_users(engine))
    X, y = encoders.transform(frame), frame["label"].to_numpy(np.float32)
    run_dir = artifacts.new_path(settings, "autoint", as_of, "")
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    model, history = fit_autoint(X, y, encoders.field_dims, config, out_dir=run_dir, verbose=_verbosity())
    seconds = time.perf_counter() - started
    path = save_model(model, run_dir / "autoint.keras")
    stats = {"train_until": train_until.isoformat(), "rows": int(len(y)), "positives": float(y.mean()),
             "ratings": int(len(ratings)), "negatives_per_rating": negatives,
             "users": int(ratings["user_id"].nunique()), "movies": int(ratings["movie_id"].nunique()),
             "encodings_artifact_id": encoders_artifact_id(engine, settings, encodings_id, train_until),
             "field_dims": encoders.field_dims}
    artifact = artifacts.register(engine, settings, "autoint", as_of, path, {"train_rows": len(y)}, stats)
    training = _history_summary(history, seconds)
    return upsert_run(engine, settings, "autoint", as_of,
                      config={**config.to_dict(), "negatives_per_rating": negatives}, data_stats=stats,
                      metrics={"training": training}, artifact=artifact)


# The product ranks every unseen movie, not only the ones a user chose to rate: training
# on ratings alone (the seed's CTR task) never shows the model a movie nobody picks.
# Each rating brings this many movies the user had not rated, sampled uniformly, as
# label-0 examples at the same time; popular movies are then learnt as likelier.
AUTOINT_NEGATIVES_PER_RATING = 1


def with_sampled_negatives(ratings, movie_ids: np.ndarray, per_rating: int, seed: int):
    """ratings (user_id, movie_id, rating, rated_at, ts, line_no) plus `per_rating` unrated
    movies per row as rating-0 rows; all in time order (so validation stays the latest)."""
    import pandas as pd

    if per_rating <= 0:
        return ratings.sort_values(["ts", "line_no"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    stride = int(movie_ids.max()) + 1
    seen = np.unique(ratings["user_id"].to_numpy(np.int64) * stride + ratings["movie_id"].to_numpy(np.int64))
    users = np.repeat(ratings["user_id"].to_numpy(np.int64), per_rating)
    picks = rng.choice(movie_ids, size=len(users))
    for _ in range(10):  # re-draw the few samples that hit a rated movie
        clash = np.isin(users * stride + picks, seen)
        if not clash.any():
            break
        picks[clash] = rng.choice(movie_ids, size=int(clash.sum()))
    keep = ~np.isin(users * stride + picks, seen)
    source = ratings.iloc[np.repeat(np.arange(len(ratings)), per_rating)[keep]]
    negatives = pd.DataFrame({
        "user_id": users[keep], "movie_id": picks[keep], "rating": np.zeros(int(keep.sum()), dtype=np.int16),
        "ts": source["ts"].to_numpy(), "line_no": source["line_no"].to_numpy(),
        "rated_at": source["rated_at"].to_numpy(),
    })
    both = pd.concat([ratings, negatives], ignore_index=True)
    return both.sort_values(["ts", "line_no"], kind="stable").reset_index(drop=True)


def encoders_artifact_id(engine, settings, encodings_id, as_of) -> int:
    if encodings_id is not None:
        return int(encodings_id)
    return artifacts.get(engine, settings, kind="encodings", as_of=as_of).artifact_id


def train_gru4rec(engine: Engine, settings: Settings, as_of: datetime, train_until: datetime, *,
                  sessions_build_id: int | None = None, overrides: dict | None = None,
                  epochs: int | None = None) -> int:
    from recpipe.models.gru4rec import fit_gru4rec
    from recpipe.sessions import load_session_sets

    config = model_config("gru4rec", overrides, epochs)
    build_id = sessions_build_id or _latest_session_build(engine, train_until)
    sets = load_session_sets(engine, build_id)
    train = sets.get("train")
    if train is None or train.empty:
        raise ValueError(f"session build {build_id} has no training sessions")
    run_dir = artifacts.new_path(settings, "gru4rec", as_of, "")
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    bundle, history = fit_gru4rec(train, config, out_dir=run_dir, verbose=_verbosity())
    seconds = time.perf_counter() - started
    bundle.save(run_dir)
    main_file = next(run_dir.glob("*.keras"))
    with engine.connect() as conn:
        params = conn.execute(sa.text("SELECT params FROM session_builds WHERE build_id = :b"),
                              {"b": build_id}).scalar_one()
    stats = {"train_until": train_until.isoformat(), "session_build_id": int(build_id), "session_params": params,
             "events": int(len(train)), "sessions": int(train["session_id"].nunique()),
             "items": int(bundle.n_items)}
    artifact = artifacts.register(engine, settings, "gru4rec", as_of, main_file, {"train_events": len(train)}, stats)
    training = _history_summary(history, seconds)
    return upsert_run(engine, settings, "gru4rec", as_of, config=config.to_dict(), data_stats=stats,
                      metrics={"training": training}, artifact=artifact)


def _latest_session_build(engine: Engine, as_of: datetime) -> int:
    with engine.connect() as conn:
        build_id = conn.execute(
            sa.text("SELECT build_id FROM session_builds WHERE purpose = 'production' AND as_of = :t"
                    " ORDER BY build_id DESC LIMIT 1"), {"t": as_of}).scalar()
    if build_id is None:
        raise LookupError(f"no production session build as of {as_of}: run `recpipe build sessions` first")
    return build_id


def train_popularity(engine: Engine, settings: Settings, as_of: datetime, train_until: datetime,
                     params: PipelineParams) -> int:
    from recpipe.db import read_ratings
    from recpipe.models.popularity import fit_popularity

    ratings = read_ratings(engine, before=train_until)
    model = fit_popularity(ratings, train_until, params.popularity_window)
    path = model.save(artifacts.new_path(settings, "popularity", as_of, ".json"))
    stats = {"train_until": train_until.isoformat(), "window_days": params.popularity_window.days,
             "movies_in_window": int((model.counts > 0).sum())}
    artifact = artifacts.register(engine, settings, "popularity", as_of, path, {"movies": len(model.movie_ids)},
                                  stats)
    return upsert_run(engine, settings, "popularity", as_of, config={"window_days": params.popularity_window.days},
                      data_stats=stats, metrics={}, artifact=artifact)


def train(engine: Engine, settings: Settings, model: str, as_of: datetime, params: PipelineParams, *,
          encodings_id: int | None = None, sessions_build_id: int | None = None,
          overrides: dict | None = None, epochs: int | None = None) -> int:
    """Train `model` for the night `as_of` on ratings before the training cutoff; returns run_id."""
    train_until = params.training_cutoff(as_of)
    if model == "autoint":
        return train_autoint(engine, settings, as_of, train_until, encodings_id=encodings_id,
                             overrides=overrides, epochs=epochs)
    if model == "gru4rec":
        return train_gru4rec(engine, settings, as_of, train_until, sessions_build_id=sessions_build_id,
                             overrides=overrides, epochs=epochs)
    if model == "popularity":
        return train_popularity(engine, settings, as_of, train_until, params)
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def _verbosity() -> int:
    """Keras progress bar in a terminal; one line per epoch in logs (Airflow, CI)."""
    import sys

    return 1 if sys.stderr.isatty() else 2


def _json_number(value):
    value = float(value)
    return value if np.isfinite(value) else None  # jsonb has no NaN


def _history_summary(history: dict, seconds: float) -> dict:
    """The fit's scalar facts (epochs, best epoch, throughput) and its curves, JSON-able."""
    curves = {k: [_json_number(x) for x in v] for k, v in history.items() if isinstance(v, (list, tuple))}
    facts = {k: _json_number(v) for k, v in history.items()
             if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    return {"seconds": round(seconds, 2), **facts, "curves": curves}


def artifact_path(settings: Settings, run: dict) -> Path:
    """The run's artifact file, verified against its recorded checksum."""
    path = settings.home / run["artifact_path"]
    actual = artifacts.sha256_file(path) if path.is_file() else None
    if actual != run["artifact_sha256"]:
        raise artifacts.ArtifactIntegrityError(
            f"run {run['run_id']} ({run['model']}): {path} does not match its recorded sha256; refusing to load it"
        )
    return path
