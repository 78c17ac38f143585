"""The model interface: one contract test run against every registered model, and the
verified loading of every artifact kind."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from recpipe import pipeline, registry, runs
from recpipe.artifacts import ArtifactIntegrityError
from recpipe.features import load_encodings
from recpipe.ingest import ingest
from recpipe.recommenders.base import History, Store
from recpipe.scoring import LoadedRun

NIGHT = datetime(2000, 12, 1, tzinfo=timezone.utc)
# Small-data settings for the models whose defaults are tuned for ML-1M.
SMALL = {
    "autoint": {"batch_size": 64, "learning_rate": 0.01, "embed_dim": 8, "dnn_units": [16]},
    "gru4rec": {"batch_size": 16, "hidden": 16, "embedding_dim": 16, "learning_rate": 0.01},
}


@pytest.fixture(scope="module")
def night(ingested):
    """Every registered model trained for one night on the generated data."""
    settings, migrated_engine = ingested
    plan = pipeline.make_plan(settings, NIGHT, epochs=1,
                              model_overrides={m: SMALL.get(m, {}) for m in registry.names()})
    inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan),
                                   pipeline.rebuild_sessions(settings, plan))
    trained: dict[str, int] = {}
    for m in registry.training_order(plan.models):  # twostage after the runs it is built from
        needs = {c: trained[c] for c in registry.spec(m).needs}
        trained[m] = pipeline.train_model(settings, plan, m, inputs.with_components(needs))["run_id"]
    return settings, migrated_engine, plan, inputs, trained


@pytest.mark.parametrize("model", registry.names())
def test_contract(night, model):
    settings, engine, plan, _, trained = night
    run = runs.get(engine, trained[model])
    assert run.status == runs.CANDIDATE and run.is_baseline == registry.spec(model).baseline
    # The stored config is the full config and loads back unchanged.
    assert registry.recommender(model).make_config(run.config, None) == run.config
    store = Store(engine, settings)
    history = History.load(store, plan.night)
    users = history.users
    lists = LoadedRun(store, run).lists(history, users, 10)
    assert list(lists.columns[:4]) == ["user_id", "rank", "movie_id", "score"]
    served = lists.groupby("user_id")
    assert len(served) >= 0.5 * len(users), "a trained model serves most users with history"
    assert (served.size() == 10).all()
    assert (served["rank"].apply(lambda r: sorted(r) == list(range(1, 11)))).all()
    assert not any(m in history.seen.get(u, ()) for u, m in zip(lists["user_id"], lists["movie_id"]))
    assert (served["movie_id"].nunique() == 10).all()


def test_gru4rec_serving_choice_is_recorded_with_the_run(night):
    """The history length chosen on validation is stored with the run (data_stats and
    the bundle's serving.json) and is what serving reads."""
    settings, engine, plan, _, trained = night
    run = runs.get(engine, trained["gru4rec"])
    serving = run.data_stats["serving"]
    stored = json.loads((_run_folder(settings, engine, run.run_id) / "serving.json").read_text())
    assert stored == serving and serving["mode"] == run.config["serving"] == "history"
    assert serving["history_length"] in run.config["history_lengths"] == serving["candidates"]
    loaded = LoadedRun(Store(engine, settings), run)
    assert loaded.model[2] == serving


def _tamper(path):
    with open(path, "ab") as fh:
        fh.write(b"\0")


def _run_folder(settings, engine, run_id):
    return settings.home / runs.get(engine, run_id).artifact_path


@pytest.mark.parametrize("model, file", [
    ("autoint", "autoint.keras"),
    ("gru4rec", "gru4rec.keras"),
    ("gru4rec", "item_index.json"),
    ("gru4rec", "gru4rec_config.json"),
    ("gru4rec", "serving.json"),
    ("popularity", "popularity.json"),
    ("popularity", "MANIFEST.json"),
    ("twostage", "twostage.json"),
])
def test_a_tampered_file_of_each_kind_is_refused(night, model, file):
    settings, engine, _, _, trained = night
    path = _run_folder(settings, engine, trained[model]) / file
    original = path.read_bytes()
    _tamper(path)
    try:
        with pytest.raises(ArtifactIntegrityError, match="refusing|changed"):
            LoadedRun(Store(engine, settings), runs.get(engine, trained[model]))
    finally:
        path.write_bytes(original)
    LoadedRun(Store(engine, settings), runs.get(engine, trained[model]))  # intact again: loads


def test_a_swapped_gru4rec_item_index_is_refused(night):
    """Replacing the ids (valid JSON, same length) used to change the lists silently."""
    settings, engine, _, _, trained = night
    path = _run_folder(settings, engine, trained["gru4rec"]) / "item_index.json"
    original = path.read_text()
    ids = json.loads(original)["movie_ids"]
    path.write_text(json.dumps({"movie_ids": list(reversed(ids))}))
    try:
        with pytest.raises(ArtifactIntegrityError):
            LoadedRun(Store(engine, settings), runs.get(engine, trained["gru4rec"]))
    finally:
        path.write_text(original)


def test_tampered_encoders_are_refused(night):
    settings, engine, _, inputs, _ = night
    from recpipe import artifacts

    path = artifacts.get(engine, settings, inputs.encodings_id).path / "encoders.joblib"
    original = path.read_bytes()
    _tamper(path)
    try:
        with pytest.raises(ArtifactIntegrityError):
            load_encodings(engine, settings, inputs.encodings_id)
    finally:
        path.write_bytes(original)


def test_an_artifact_outside_the_artifacts_folder_is_refused(night, tmp_path):
    """A row pointing elsewhere, even with a matching checksum, is never loaded."""
    settings, engine, _, _, trained = night
    import shutil

    outside = tmp_path / "elsewhere"
    shutil.copytree(_run_folder(settings, engine, trained["popularity"]), outside)
    relative = "../" * len(settings.home.resolve().parts) + str(outside.resolve()).lstrip("/")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO model_runs (model, as_of, artifact_path, artifact_sha256, is_baseline,"
                             " dry_run) SELECT model, as_of, :p, artifact_sha256, true, true FROM model_runs"
                             " WHERE run_id = :r RETURNING run_id"), {"p": relative, "r": trained["popularity"]})
        copy = conn.execute(sa.text("SELECT max(run_id) FROM model_runs")).scalar()
    with pytest.raises(ArtifactIntegrityError, match="outside"):
        LoadedRun(Store(engine, settings), runs.get(engine, copy))
