"""Encodings and sessions rebuilt as of a time, from a real PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from recpipe import artifacts
from recpipe.artifacts import ArtifactIntegrityError
from recpipe.features import FIELDS, UNKNOWN, FieldEncoders, build_encodings, derive_fields, load_encodings
from recpipe.ingest import ingest
from recpipe.sessions import (
    SEED002_PARAMS, SessionParams, build_sessions, filter_sessions, load_session_sets, make_session_sets,
    sessionize,
    split_by_last_event,
)
from recpipe.source import load_ml1m_frames

UTC = timezone.utc
SEED_FIELD_SIZES = [6040, 3706, 10, 81, 4, 12, 1, 18, 18, 16, 2, 7, 21, 3439]


def events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    frame["line_no"] = np.arange(1, len(frame) + 1)
    return frame


def test_sessionize_gap_uses_explicit_units():
    minute = 60
    frame = events([(1, 10, 5, 0), (1, 11, 5, 29 * minute), (1, 12, 5, 60 * minute), (2, 10, 5, 61 * minute)])
    gap = sessionize(frame, "gap", session_gap=timedelta(minutes=30))
    assert gap["session_id"].tolist() == [0, 0, 1, 2]
    wide = sessionize(frame, "gap", session_gap=timedelta(hours=1))
    assert wide["session_id"].tolist() == [0, 0, 0, 1]


def test_sessionize_bucket_cuts_at_clock_boundaries():
    hour = 3600
    frame = events([(1, 10, 5, 2 * hour - 1), (1, 11, 5, 2 * hour), (1, 12, 5, 3 * hour)])
    out = sessionize(frame, "bucket", bucket=timedelta(hours=2))
    assert out["session_id"].tolist() == [0, 1, 1]


def test_same_second_ties_keep_file_order():
    frame = events([(1, 30, 5, 100), (1, 20, 5, 100), (1, 10, 5, 100)])
    shuffled = frame.sample(frac=1, random_state=3)
    assert sessionize(shuffled)["movie_id"].tolist() == [30, 20, 10]


def test_filters_repeat_until_stable():
    # Sessions 3-5 lose their rare last items (support 1) in the first pass and fall
    # to length 2; only a second pass drops them, and with them items 7 and 8.
    rows, t = [], 0
    for user, items in enumerate([[1, 2, 3], [1, 2, 3], [1, 2, 3], [7, 8, 9], [7, 8, 10], [7, 8, 11]]):
        for item in items:
            rows.append((user, item, 5, t))
            t += 1
        t += 86_400
    rows.append((0, 3, 2, 1))  # a low rating: dropped first
    out = filter_sessions(sessionize(events(rows)), min_rating=3, min_session_length=3, min_item_support=3)
    assert sorted(out["movie_id"].unique()) == [1, 2, 3]
    assert (out.groupby("session_id").size() >= 3).all()


@pytest.mark.ml1m
def test_seed_bucket_split_reproduces_seed_counts(ml1m_dir):
    ratings, _, _ = load_ml1m_frames(ml1m_dir)
    sets = make_session_sets(ratings, SEED002_PARAMS, "evaluation")
    stats = {k: (len(v), v["session_id"].nunique(), v["movie_id"].nunique()) for k, v in sets.items()}
    assert stats["train"] == (805_419, 16_309, 3_100)
    assert stats["validation"][:2] == (9_853, 698)
    assert stats["test"] == (7_188, 462, 1_986)


@pytest.mark.ml1m
def test_field_dims_match_seed_plus_unknown(ml1m_dir):
    ratings, movies, users = load_ml1m_frames(ml1m_dir)
    encoders = FieldEncoders().fit(derive_fields(ratings, movies, users))
    assert encoders.field_dims == [n + 1 for n in SEED_FIELD_SIZES]


def test_unknown_values_encode_to_reserved_zero(synthetic_dir):
    ratings, movies, users = load_ml1m_frames(synthetic_dir)
    encoders = FieldEncoders().fit(derive_fields(ratings, movies, users))
    new = pd.DataFrame({"user_id": [10_000], "movie_id": [1], "rated_at": [pd.Timestamp("2031-05-01", tz="UTC")]})
    codes = encoders.transform(derive_fields(new, movies, users))[0]
    by_field = dict(zip(FIELDS, codes))
    assert by_field["user_id"] == UNKNOWN and by_field["zip"] == UNKNOWN and by_field["rating_year"] == UNKNOWN
    assert by_field["movie_id"] != UNKNOWN and by_field["genre1"] != UNKNOWN


def test_rebuilds_as_of_use_no_later_rating(engine, settings):
    ingest(engine, settings.source_dir)
    cut = datetime(2000, 8, 1, tzinfo=UTC)
    with engine.connect() as conn:
        before = conn.exec_driver_sql("SELECT count(*) FROM ratings WHERE rated_at < %s", (cut,)).scalar_one()
        later_users = conn.exec_driver_sql(
            "SELECT count(DISTINCT user_id) FROM ratings WHERE user_id NOT IN"
            " (SELECT user_id FROM ratings WHERE rated_at < %s)", (cut,)).scalar_one()
    enc = build_encodings(engine, settings, cut)
    assert enc.row_counts["ratings"] == before
    encoders = load_encodings(engine, settings, enc.artifact_id)
    users_known = len(encoders.vocabularies["user_id"])
    with engine.connect() as conn:
        assert users_known == conn.exec_driver_sql(
            "SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < %s", (cut,)).scalar_one()
    assert later_users > 0  # users first seen after the cut exist, and are not in the vocabulary
    assert max(encoders.vocabularies["rating_month"], key=int) == "7"

    built = build_sessions(engine, cut, SessionParams(min_item_support=2), "production")
    sets = load_session_sets(engine, built["build_id"])
    assert pd.to_datetime(sets["train"]["ts"].max(), unit="s", utc=True) < cut
    assert pd.to_datetime(sets["latest"]["ts"].max(), unit="s", utc=True) < cut
    assert sets["latest"].groupby("user_id")["session_id"].nunique().max() == 1


def test_encoders_from_distinct_keys_equal_encoders_from_every_rating(engine, settings):
    """build_encodings fits on each distinct user, movie and month (not one row per
    rating): the vocabularies must be the ones every rating's fields give."""
    from recpipe.db import read_movies, read_ratings, read_users

    ingest(engine, settings.source_dir)
    cut = datetime(2000, 10, 1, tzinfo=UTC)
    by_row = FieldEncoders().fit(derive_fields(read_ratings(engine, before=cut), read_movies(engine), read_users(engine)))
    built = load_encodings(engine, settings, build_encodings(engine, settings, cut).artifact_id)
    assert built.fields == by_row.fields and built.field_dims == by_row.field_dims
    assert built.vocabularies == by_row.vocabularies
    assert built.rows_fitted == by_row.rows_fitted


def test_session_rebuild_is_idempotent(engine, settings, monkeypatch):
    import recpipe.sessions as sessions_mod

    ingest(engine, settings.source_dir)
    as_of = datetime(2000, 12, 31, tzinfo=UTC)
    params = SessionParams(min_item_support=2, test_days=30, val_days=30)
    first = build_sessions(engine, as_of, params, "evaluation")
    stored = load_session_sets(engine, first["build_id"])
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT count(*), sum(movie_id) FROM sessions").one()
    monkeypatch.setattr(sessions_mod, "COPY_ROWS", 7)  # written in many small COPYs: the same rows
    second = build_sessions(engine, as_of, params, "evaluation")
    again = load_session_sets(engine, second["build_id"])
    assert stored.keys() == again.keys() and all(stored[k].equals(again[k]) for k in stored)
    assert second["build_id"] == first["build_id"] and second["stats"] == first["stats"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*), sum(movie_id) FROM sessions").one() == rows
        assert conn.exec_driver_sql("SELECT count(*) FROM session_builds").scalar_one() == 1
    assert first["stats"]["train"]["events"] > 0 and first["stats"]["test"]["events"] > 0


def test_tampered_encoder_artifact_is_refused(engine, settings):
    ingest(engine, settings.source_dir)
    built = build_encodings(engine, settings, datetime(2001, 1, 1, tzinfo=UTC))
    path = artifacts.get(engine, settings, built.artifact_id).path / "encoders.joblib"
    with open(path, "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(ArtifactIntegrityError, match="refusing"):
        load_encodings(engine, settings, built.artifact_id)


def test_cli_build_sessions_json(engine, settings):
    import os

    ingest(engine, settings.source_dir)
    env = {**os.environ, "RECPIPE_DATABASE_URL": settings.database_url, "RECPIPE_HOME": str(settings.home)}
    done = subprocess.run(
        [sys.executable, "-m", "recpipe.cli", "build", "sessions", "--as-of", "2001-01-01", "--mode", "bucket",
         "--bucket", "2h", "--test-days", "30", "--val-days", "30", "--json"],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)["stats"]
    assert set(stats) == {"train", "validation", "test"}
    assert stats["train"]["events"] > 0
