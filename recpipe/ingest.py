"""Ingest MovieLens files into Postgres for one interval of rating times, idempotently.

One transaction per batch: users and movies are upserted from their files, then the
ratings whose timestamp lies in [start, end) are COPYed into a staging table and
classified in one set-based statement: inserted, duplicate (identical to a stored
rating) or rejected with a reason. Every line read is accounted for:
`lines_read = inserted + duplicate + rejected`.

A bad line whose timestamp cannot be read cannot be placed in an interval, so every
batch that reads the file counts it as rejected (it is recorded once, in rejected_rows).
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe import source
from recpipe.db import copy_frame, raw_cursor

log = logging.getLogger(__name__)
INGEST_LOCK_KEY = 0x7265_6369  # "reci": advisory lock held by the ingest transaction


@dataclass
class BatchReport:
    batch_id: int
    source: str
    interval_start: datetime | None
    interval_end: datetime | None
    lines_read: int
    inserted: int
    duplicate: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)
    users_changed: int = 0
    movies_changed: int = 0
    seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return self.lines_read == self.inserted + self.duplicate + self.rejected

    def summary(self) -> str:
        span = (
            "all ratings"
            if self.interval_start is None and self.interval_end is None
            else f"[{_iso(self.interval_start)}, {_iso(self.interval_end)})"
        )
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return (
            f"batch {self.batch_id} {span}: read {self.lines_read} = inserted {self.inserted}"
            f" + duplicate {self.duplicate} + rejected {self.rejected}"
            f" ({'reconciled' if self.reconciles else 'NOT RECONCILED'}); rejected by reason: {reasons};"
            f" users changed {self.users_changed}, movies changed {self.movies_changed}; {self.seconds:.1f}s"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["interval_start"] = _iso(self.interval_start)
        out["interval_end"] = _iso(self.interval_end)
        out["reconciles"] = self.reconciles
        return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _timestamp_of(raw_line: str) -> int | None:
    """The Unix time of a rejected ratings line, when its last field is one."""
    fields = raw_line.split("::")
    if len(fields) == 4 and fields[3].strip().isdigit():
        value = int(fields[3])
        return value if source.MIN_TIMESTAMP <= value < source.MAX_TIMESTAMP else None
    return None


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc="ingest", unit="step", disable=not enabled, leave=False)


def ingest(
    engine: Engine,
    source_dir: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    progress: bool | None = None,
) -> BatchReport:
    """Load the ratings with start <= rated_at < end (None = unbounded) from source_dir."""
    started = time.perf_counter()
    source_dir = source.check_source_dir(source_dir)
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start >= end:
        raise ValueError(f"empty interval: start {start} is not before end {end}")
    with _progress(6, progress) as bar:
        users = source.parse_users(source_dir / source.USERS_FILE)
        movies = source.parse_movies(source_dir / source.MOVIES_FILE)
        ratings = source.parse_ratings(source_dir / source.RATINGS_FILE)
        bar.update(1)

        lo = -np.inf if start is None else start.timestamp()
        hi = np.inf if end is None else end.timestamp()
        rows = ratings.rows
        rows = rows[(rows["ts"] >= lo) & (rows["ts"] < hi)]
        bad = ratings.rejected
        bad_ts = bad["raw_line"].map(_timestamp_of)
        in_interval = bad_ts.isna() | ((bad_ts >= lo) & (bad_ts < hi))
        bad = bad[in_interval.to_numpy(bool)]

        with engine.begin() as conn:
            # One ingest at a time: concurrent batches would race on the same keys.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK_KEY})
            batch_id = conn.execute(
                sa.text(
                    "INSERT INTO ingest_batches (source, interval_start, interval_end, input_sha256)"
                    " VALUES (:source, :start, :end, :sha) RETURNING batch_id"
                ),
                {"source": str(source_dir), "start": start, "end": end, "sha": ratings.sha256},
            ).scalar_one()
            users_changed = _upsert_users(conn, users.rows)
            movies_changed = _upsert_movies(conn, movies.rows)
            for name, parsed in ((source.USERS_FILE, users), (source.MOVIES_FILE, movies)):
                _record_rejected(conn, batch_id, name, parsed.rejected)
            bar.update(1)
            _stage_ratings(conn, rows)
            bar.update(1)
            outcome = _classify_and_insert(conn, batch_id, len(rows))
            bar.update(2)
            _record_rejected(conn, batch_id, source.RATINGS_FILE, bad)
            reasons = Counter(dict(outcome["rejected"]))
            reasons.update(bad["reason"].value_counts().to_dict())
            report = BatchReport(
                batch_id=batch_id,
                source=str(source_dir),
                interval_start=start,
                interval_end=end,
                lines_read=len(rows) + len(bad),
                inserted=outcome["inserted"],
                duplicate=outcome["duplicate"],
                rejected=sum(reasons.values()),
                reasons=dict(reasons),
                users_changed=users_changed,
                movies_changed=movies_changed,
            )
            if not report.reconciles:  # would be a bug here, never bad input
                raise RuntimeError(f"ingest does not reconcile: {report.summary()}")
            conn.execute(
                sa.text(
                    "UPDATE ingest_batches SET lines_read = :read, inserted = :ins, duplicate = :dup,"
                    " rejected = :rej, finished_at = clock_timestamp() WHERE batch_id = :id"
                ),
                {"read": report.lines_read, "ins": report.inserted, "dup": report.duplicate,
                 "rej": report.rejected, "id": batch_id},
            )
            bar.update(1)
    report.seconds = time.perf_counter() - started
    log.info(report.summary())
    return report


def _upsert_users(conn: sa.Connection, users: pd.DataFrame) -> int:
    conn.exec_driver_sql(
        "CREATE TEMP TABLE stage_users (LIKE users INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    copy_frame(conn, "stage_users", users.drop_duplicates("user_id", keep="last"),
               ["user_id", "gender", "age", "occupation", "zip"])
    # Only rows that really change are written: a re-run touches nothing.
    return conn.exec_driver_sql(
        "INSERT INTO users SELECT * FROM stage_users ON CONFLICT (user_id) DO UPDATE"
        " SET gender = EXCLUDED.gender, age = EXCLUDED.age, occupation = EXCLUDED.occupation, zip = EXCLUDED.zip"
        " WHERE (users.gender, users.age, users.occupation, users.zip)"
        " IS DISTINCT FROM (EXCLUDED.gender, EXCLUDED.age, EXCLUDED.occupation, EXCLUDED.zip)"
    ).rowcount


def _pg_array(values: list[str]) -> str:
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _upsert_movies(conn: sa.Connection, movies: pd.DataFrame) -> int:
    frame = movies.drop_duplicates("movie_id", keep="last").copy()
    frame["genres"] = frame["genres"].map(_pg_array)
    conn.exec_driver_sql("CREATE TEMP TABLE stage_movies (LIKE movies INCLUDING DEFAULTS) ON COMMIT DROP")
    copy_frame(conn, "stage_movies", frame, ["movie_id", "title", "year", "genres"])
    return conn.exec_driver_sql(
        "INSERT INTO movies SELECT * FROM stage_movies ON CONFLICT (movie_id) DO UPDATE"
        " SET title = EXCLUDED.title, year = EXCLUDED.year, genres = EXCLUDED.genres"
        " WHERE (movies.title, movies.year, movies.genres)"
        " IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.year, EXCLUDED.genres)"
    ).rowcount


def _stage_ratings(conn: sa.Connection, rows: pd.DataFrame) -> None:
    """COPY the parsed rows into a temp table, each marked against earlier lines of the
    same (user, movie) in this input: 0 first, 1 identical repeat, 2 differing repeat."""
    rows = rows.sort_values("line_no", kind="stable")
    key = ["user_id", "movie_id"]
    repeat = rows.duplicated(key, keep="first").to_numpy()
    identical = rows.duplicated(key + ["rating", "ts"], keep="first").to_numpy()
    staged = rows.assign(repeat=np.where(repeat, np.where(identical, 1, 2), 0))
    conn.exec_driver_sql(
        "CREATE TEMP TABLE stage_ratings (user_id integer, movie_id integer, rating smallint,"
        " ts bigint, line_no bigint, repeat smallint) ON COMMIT DROP"
    )
    copy_frame(conn, "stage_ratings", staged, ["user_id", "movie_id", "rating", "ts", "line_no", "repeat"])


# Above this many staged ratings, the foreign keys of `ratings` are dropped for the
# insert and re-added (re-validated by one join) in the same transaction: row-by-row
# FK triggers cost ~15 s per million rows, the re-validation ~0.2 s.
BULK_INSERT_ROWS = 50_000
_RATINGS_FKS = {
    "ratings_user_id_fkey": "FOREIGN KEY (user_id) REFERENCES users",
    "ratings_movie_id_fkey": "FOREIGN KEY (movie_id) REFERENCES movies",
    "ratings_batch_id_fkey": "FOREIGN KEY (batch_id) REFERENCES ingest_batches",
}

# One statement decides each staged row's fate and writes inserts and rejections.
_CLASSIFY_AND_WRITE = """
WITH classified AS MATERIALIZED (
    SELECT s.user_id, s.movie_id, s.rating, to_timestamp(s.ts) AS rated_at, s.line_no,
           CASE
             WHEN u.user_id IS NULL THEN 'unknown_user'
             WHEN m.movie_id IS NULL THEN 'unknown_movie'
             WHEN r.user_id IS NOT NULL AND r.rating = s.rating AND r.rated_at = to_timestamp(s.ts)
               THEN 'duplicate'
             WHEN r.user_id IS NOT NULL THEN 'conflicts_stored'
             WHEN s.repeat = 0 THEN 'insert'
             WHEN s.repeat = 1 THEN 'duplicate'
             ELSE 'duplicate_in_file'
           END AS outcome
    FROM stage_ratings s
    LEFT JOIN users u ON u.user_id = s.user_id
    LEFT JOIN movies m ON m.movie_id = s.movie_id
    LEFT JOIN ratings r ON r.user_id = s.user_id AND r.movie_id = s.movie_id
), inserted AS (
    INSERT INTO ratings (user_id, movie_id, rating, rated_at, batch_id, source_line)
    SELECT user_id, movie_id, rating, rated_at, %(batch)s, line_no FROM classified
    WHERE outcome = 'insert'
    ORDER BY user_id, movie_id  -- primary-key order: sequential index inserts
    RETURNING 1
), rejected AS (
    INSERT INTO rejected_rows (source_file, line_no, batch_id, raw_line, reason)
    SELECT %(file)s, line_no, %(batch)s,
           concat_ws('::', user_id, movie_id, rating, extract(epoch FROM rated_at)::bigint), outcome
    FROM classified WHERE outcome NOT IN ('insert', 'duplicate')
    ON CONFLICT (source_file, line_no) DO NOTHING
    RETURNING 1
)
SELECT outcome, count(*) FROM classified GROUP BY outcome
UNION ALL SELECT 'rows_inserted', count(*) FROM inserted
"""


def _classify_and_insert(conn: sa.Connection, batch_id: int, staged_rows: int) -> dict:
    bulk = staged_rows > BULK_INSERT_ROWS
    if bulk:
        conn.exec_driver_sql(
            "ALTER TABLE ratings " + ", ".join(f"DROP CONSTRAINT {name}" for name in _RATINGS_FKS)
        )
    with raw_cursor(conn) as cur:
        cur.execute(_CLASSIFY_AND_WRITE, {"batch": batch_id, "file": source.RATINGS_FILE})
        counts = dict(cur.fetchall())
    if bulk:
        conn.exec_driver_sql(
            "ALTER TABLE ratings " + ", ".join(f"ADD CONSTRAINT {n} {d}" for n, d in _RATINGS_FKS.items())
        )
    inserted = counts.pop("rows_inserted")
    if inserted != counts.pop("insert", 0):
        raise RuntimeError("ratings changed under the ingest despite its lock")
    return {
        "inserted": inserted,
        "duplicate": counts.pop("duplicate", 0),
        "rejected": list(counts.items()),
    }


def _record_rejected(conn: sa.Connection, batch_id: int, file_name: str, rejected: pd.DataFrame) -> None:
    if rejected.empty:
        return
    frame = rejected.assign(batch_id=batch_id, source_file=file_name)
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS stage_rejected (LIKE rejected_rows INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    conn.exec_driver_sql("TRUNCATE stage_rejected")
    copy_frame(conn, "stage_rejected", frame, ["source_file", "line_no", "batch_id", "raw_line", "reason"])
    conn.exec_driver_sql(
        "INSERT INTO rejected_rows SELECT * FROM stage_rejected ON CONFLICT (source_file, line_no) DO NOTHING"
    )
