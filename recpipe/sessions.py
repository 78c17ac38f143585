"""User sessions for GRU4Rec: sessionize, filter, split; rebuilt as of a time T.

Every duration carries its unit (`timedelta`). Events are ordered by user, time and
the rating's line in the source file, so ratings given within the same second keep
a repeatable order.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

GAP, BUCKET = "gap", "bucket"
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SessionParams:
    mode: str = GAP
    session_gap: timedelta = timedelta(minutes=30)  # gap mode: inactivity that ends a session
    bucket: timedelta = timedelta(hours=2)  # bucket mode: seed 002's fixed clock buckets
    min_rating: int = 3
    min_session_length: int = 3
    min_item_support: int = 10
    test_days: int = 200
    val_days: int = 200

    def to_dict(self) -> dict:
        out = asdict(self)
        out["session_gap"] = f"{int(self.session_gap.total_seconds())}s"
        out["bucket"] = f"{int(self.bucket.total_seconds())}s"
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SessionParams":
        """Inverse of to_dict (durations as "<seconds>s")."""
        values = dict(data)
        for name in ("session_gap", "bucket"):
            if isinstance(values.get(name), str):
                values[name] = timedelta(seconds=float(values[name].removesuffix("s")))
        return cls(**values)


SEED002_PARAMS = SessionParams(mode=BUCKET, bucket=timedelta(hours=2))


@dataclass
class SessionSplit:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def _ordered(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values(["user_id", "ts", "line_no"], kind="stable").reset_index(drop=True)


def sessionize(
    events: pd.DataFrame,
    mode: str = GAP,
    session_gap: timedelta = timedelta(minutes=30),
    bucket: timedelta = timedelta(hours=2),
) -> pd.DataFrame:
    """Add `session_id` (0..n-1 in user/time order) to events with user_id, ts (Unix s), line_no.

    gap: a new session starts after more than `session_gap` without an event.
    bucket: a session is one user's events within one `floor(ts / bucket)` clock bucket.
    """
    out = _ordered(events)
    user = out["user_id"].to_numpy()
    ts = out["ts"].to_numpy(np.int64)
    new_user = np.r_[True, user[1:] != user[:-1]] if len(out) else np.zeros(0, bool)
    if mode == GAP:
        gap_s = session_gap.total_seconds()
        starts = new_user | np.r_[True, np.diff(ts) > gap_s]
    elif mode == BUCKET:
        bucket_s = int(bucket.total_seconds())
        if bucket_s <= 0:
            raise ValueError("bucket must be a positive duration")
        slot = ts // bucket_s
        starts = new_user | np.r_[True, slot[1:] != slot[:-1]]
    else:
        raise ValueError(f"unknown session mode {mode!r} (expected {GAP!r} or {BUCKET!r})")
    out["session_id"] = np.cumsum(starts) - 1
    return out


def filter_sessions(
    events: pd.DataFrame, min_rating: int = 3, min_session_length: int = 3, min_item_support: int = 10
) -> pd.DataFrame:
    """Drop ratings below min_rating, then short sessions and rare items until stable."""
    out = events[events["rating"] >= min_rating]
    while True:
        before = len(out)
        lengths = out.groupby("session_id")["session_id"].transform("size")
        out = out[lengths >= min_session_length]
        support = out.groupby("movie_id")["movie_id"].transform("size")
        out = out[support >= min_item_support]
        if len(out) == before:
            return out.reset_index(drop=True)


def _split_last(events: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions ending in the last `days` before the newest event go after; their items
    unseen before are dropped (as seed 002 does)."""
    cutoff = events["ts"].max() - days * SECONDS_PER_DAY
    last = events.groupby("session_id")["ts"].transform("max")
    before, after = events[last < cutoff], events[last >= cutoff]
    after = after[after["movie_id"].isin(before["movie_id"].unique())]
    return before.reset_index(drop=True), after.reset_index(drop=True)


def split_by_last_event(events: pd.DataFrame, test_days: int = 200, val_days: int = 200) -> SessionSplit:
    """Evaluation split on each session's last event: test = last test_days, validation =
    the val_days before, train = the rest (seed 002's procedure)."""
    train_val, test = _split_last(events, test_days)
    train, validation = _split_last(train_val, val_days)
    return SessionSplit(train, validation, test)


def latest_sessions(events: pd.DataFrame, min_rating: int = 3) -> pd.DataFrame:
    """Each user's most recent session (ratings >= min_rating), the input for scoring."""
    liked = events[events["rating"] >= min_rating]
    last = liked.groupby("user_id")["session_id"].transform("max")
    return liked[liked["session_id"] == last].reset_index(drop=True)


def split_stats(frame: pd.DataFrame) -> dict:
    if frame.empty:
        return {"events": 0, "sessions": 0, "items": 0, "users": 0, "first": None, "last": None}
    return {
        "events": int(len(frame)),
        "sessions": int(frame["session_id"].nunique()),
        "items": int(frame["movie_id"].nunique()),
        "users": int(frame["user_id"].nunique()),
        "first": pd.Timestamp(int(frame["ts"].min()), unit="s", tz="UTC").isoformat(),
        "last": pd.Timestamp(int(frame["ts"].max()), unit="s", tz="UTC").isoformat(),
    }


EVALUATION, PRODUCTION = "evaluation", "production"
# Rows per COPY of a build: the whole build as CSV text at once (timestamps as
# strings) was the stage's peak RSS (5M ratings: 1.81 GiB, 1.24 in chunks).
COPY_ROWS = 1 << 20


def make_session_sets(events: pd.DataFrame, params: SessionParams, purpose: str) -> dict[str, pd.DataFrame]:
    """Named session sets from raw events (user_id, movie_id, rating, ts, line_no).

    evaluation: train / validation / test as split_by_last_event.
    production: train = every filtered session; latest = each user's newest session
    (for scoring, unfiltered but for min_rating).
    """
    sessions = sessionize(events, params.mode, params.session_gap, params.bucket)
    kept = filter_sessions(sessions, params.min_rating, params.min_session_length, params.min_item_support)
    if purpose == EVALUATION:
        split = split_by_last_event(kept, params.test_days, params.val_days)
        return {"train": split.train, "validation": split.validation, "test": split.test}
    if purpose == PRODUCTION:
        return {"train": kept, "latest": latest_sessions(sessions, params.min_rating)}
    raise ValueError(f"unknown purpose {purpose!r}")


def build_sessions(engine, as_of: datetime, params: SessionParams = SessionParams(), purpose: str = PRODUCTION) -> dict:
    """Sessionize the ratings before `as_of` and store the sets in `sessions`.

    Rebuilding with the same as_of, purpose and params replaces that build (same
    build_id, same rows): a re-run changes nothing.
    """
    import sqlalchemy as sa

    from recpipe.db import copy_frame, read_ratings

    events = read_ratings(engine, before=as_of)
    sets = make_session_sets(events, params, purpose)
    stats = {name: split_stats(frame) for name, frame in sets.items()}
    params_json = json.dumps(params.to_dict(), sort_keys=True)
    with engine.begin() as conn:
        build_id = conn.execute(
            sa.text(
                "INSERT INTO session_builds (as_of, purpose, params, stats)"
                " VALUES (:as_of, :purpose, CAST(:params AS jsonb), CAST(:stats AS jsonb))"
                " ON CONFLICT (as_of, purpose, params) DO UPDATE SET stats = EXCLUDED.stats"
                " RETURNING build_id"
            ),
            {"as_of": as_of, "purpose": purpose, "params": params_json, "stats": json.dumps(stats)},
        ).scalar_one()
        conn.execute(sa.text("DELETE FROM sessions WHERE build_id = :b"), {"b": build_id})
        conn.exec_driver_sql("SET LOCAL timezone = 'UTC'")
        for name, frame in sets.items():
            position = frame.groupby("session_id").cumcount()
            for lo in range(0, len(frame), COPY_ROWS):  # memory: one chunk's text, not the whole set's
                part = frame.iloc[lo:lo + COPY_ROWS]
                rows = part.assign(
                    build_id=build_id,
                    split=name,
                    position=position.iloc[lo:lo + COPY_ROWS],
                    # ISO text without zone, read as UTC (SET LOCAL below): far faster than strftime.
                    rated_at=np.datetime_as_string(part["ts"].to_numpy("datetime64[s]")),
                )
                copy_frame(conn, "sessions", rows, ["build_id", "split", "session_id", "position", "user_id",
                                                    "movie_id", "rating", "rated_at"])
    log.info("session build %s as of %s: %s", build_id, as_of, stats)
    return {"build_id": build_id, "as_of": as_of.isoformat(), "purpose": purpose, "params": params.to_dict(),
            "stats": stats}


def load_session_build(engine, build_id: int) -> tuple[dict, dict[str, pd.DataFrame]]:
    """(params as stored, sets) of a build."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        params = conn.execute(sa.text("SELECT params FROM session_builds WHERE build_id = :b"),
                              {"b": build_id}).scalar()
    if params is None:
        raise LookupError(f"no session build {build_id}")
    return params, load_session_sets(engine, build_id)


def load_session_sets(engine, build_id: int) -> dict[str, pd.DataFrame]:
    """The stored sets of a build, each ordered by session and position."""
    from recpipe.db import read_frame

    with engine.connect() as conn:
        frame = read_frame(
            conn,
            "SELECT split, session_id, position, user_id, movie_id, rating,"
            " extract(epoch FROM rated_at)::bigint AS ts FROM sessions WHERE build_id = %(b)s"
            " ORDER BY split, session_id, position",
            {"b": build_id},
        )
    return {name: part.drop(columns="split").reset_index(drop=True) for name, part in frame.groupby("split")}
