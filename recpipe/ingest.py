"""Ingest a source folder (ML-1M .dat, ML-25M/32M or generic CSV: recpipe.formats) into
Postgres for one interval of rating times, idempotently.

One transaction per batch, under the `ingest` row of pipeline_locks: users and movies
are upserted from their files, then each rating whose timestamp lies in [start, end)
is inserted, counted as a duplicate (identical to a stored rating or to an earlier line)
or rejected with a reason. The ratings are COPYed into a staging table and classified
by set-based statements (sql/pipeline/ingest_*.sql); a large first load into an empty
table, which can meet no stored rating, is classified in numpy and COPYed straight
into `ratings`. Every line read is accounted for, per file (ingest_batch_files) and
for the batch's ratings (ingest_batches): `lines_read = inserted (stored) + duplicate
+ rejected`.

Of several ratings of one (user, movie) with different values, the earliest (by time,
then line) is kept, so consecutive intervals store exactly what one --all ingest does.

Quarantine: every rejection of every batch is a rejected_sightings row (batch, file,
line, reason); the line's exact bytes are in rejected_rows, written by the first batch
that rejects those bytes at that line and pointed at by later batches while it is
unresolved. When a later batch stores that line (same file, line number and bytes),
the row gets resolved_by_batch. A ratings line whose timestamp cannot be read belongs
to no interval: every batch that reads the file counts it as rejected (one sighting
per batch, its bytes stored once), so each batch reconciles exactly and daily
ingests never fail on it.
"""
from __future__ import annotations

import io
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

from recpipe import formats, source
from recpipe.db import raw_cursor, statement
from recpipe.locks import LockTimeout, take_lock  # noqa: F401 (LockTimeout: what callers catch)

log = logging.getLogger(__name__)
INGEST_LOCK = "ingest"  # row of pipeline_locks held by the ingest transaction
# Dropping the ratings FKs needs an exclusive lock that any open reader transaction
# blocks: wait this long at most, then insert with the FKs in place (slower, never stuck).
BULK_DDL_LOCK_TIMEOUT_S = 5.0


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
    # Per file: lines_read, stored, duplicate, rejected, reasons (users/movies: every
    # batch reads the whole file; ratings: the lines of this interval).
    files: dict[str, dict] = field(default_factory=dict)

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
    fmt: str = "auto",
) -> BatchReport:
    """Load the ratings with start <= rated_at < end (None = unbounded) from source_dir,
    a folder in format fmt (recpipe.formats: auto, ml-1m, ml-25m, ml-32m, generic)."""
    started = time.perf_counter()
    files_in = formats.resolve(source_dir, fmt)
    source_dir = files_in.folder
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start >= end:
        raise ValueError(f"empty interval: start {start} is not before end {end}")
    with _progress(6, progress) as bar:
        # All three files are parsed (and a whole-file refusal raised) before any write.
        # A file the source does not provide is None: its ids come from the ratings.
        users = files_in.parse_users()
        movies = files_in.parse_items()
        ratings = files_in.parse_ratings()
        ratings_file = files_in.ratings.name
        bar.update(1)

        lo = -np.inf if start is None else start.timestamp()
        hi = np.inf if end is None else end.timestamp()
        rows = ratings.rows
        rows = rows[((rows["ts"] >= lo) & (rows["ts"] < hi)).to_numpy()]
        bad = ratings.rejected
        bad_ts = bad["ts"].astype("float64")  # NA (no readable timestamp) -> NaN
        in_interval = bad_ts.isna() | ((bad_ts >= lo) & (bad_ts < hi))
        bad = bad[in_interval.to_numpy(bool)]

        with engine.begin() as conn:
            # One ingest at a time: concurrent batches would race on the same keys.
            take_lock(conn, INGEST_LOCK)
            batch_id = conn.execute(
                sa.text(
                    "INSERT INTO ingest_batches (source, interval_start, interval_end, input_sha256, source_format)"
                    " VALUES (:source, :start, :end, :sha, :fmt) RETURNING batch_id"
                ),
                {"source": str(source_dir), "start": start, "end": end, "sha": ratings.sha256,
                 "fmt": files_in.format},
            ).scalar_one()
            files: dict[str, dict] = {}
            parsed_files = {}  # file name -> Parsed, for the ledger
            users_changed = _upsert_users(conn, users.rows) if users is not None else 0
            movies_changed = _upsert_movies(conn, movies.rows) if movies is not None else 0
            for path, parsed, changed in ((files_in.users, users, users_changed),
                                          (files_in.items, movies, movies_changed)):
                if parsed is None:
                    continue
                files[path.name] = _file_counts(
                    parsed.lines_read, changed, len(parsed.rows) - changed + parsed.duplicate, parsed.rejected)
                parsed_files[path.name] = parsed
                _quarantine(conn, batch_id, path.name, parsed, parsed.rejected, parsed.rows["line_no"].to_numpy())
            bar.update(1)
            rows, repeat = _mark_repeats(rows)
            # Without an items (users) file, the items (users) rated are the known ones,
            # attributes NULL; a user is implied only by a rating of a known item.
            if movies is None:
                movies_changed += _add_ids(conn, "movies", "movie_id", rows["movie_id"])
            movie_known = None  # which rows rate a known movie, when it is needed twice
            if users is None:
                movie_known = np.isin(rows["movie_id"].to_numpy(), _ids(conn, "movies", "movie_id"))
                users_changed += _add_ids(conn, "users", "user_id", rows["user_id"].to_numpy()[movie_known])
            bar.update(1)
            if len(rows) > BULK_INSERT_ROWS and _ratings_empty(conn):
                outcome = _first_load(conn, batch_id, rows, repeat, users_implied=users is None,
                                      movie_known=movie_known)
            else:
                _stage_ratings(conn, rows, repeat)
                outcome = _classify_and_insert(conn, batch_id, len(rows), users_implied=users is None)
            bar.update(2)
            db_rejected = pd.DataFrame(outcome["rejected_lines"], columns=["line_no", "reason"])
            db_rejected["raw_bytes"] = [ratings.line_bytes(n) for n in db_rejected["line_no"]]
            db_rejected["raw_line"] = [source.raw_text(b, "ascii") for b in db_rejected["raw_bytes"]]
            all_rejected = pd.concat([bad, db_rejected], ignore_index=True)
            stored_lines = rows["line_no"].to_numpy()
            if len(db_rejected):  # a sort of every line otherwise (~5 s at 25M)
                stored_lines = stored_lines[~np.isin(stored_lines, db_rejected["line_no"].to_numpy())]
            _quarantine(conn, batch_id, ratings_file, ratings, all_rejected, stored_lines)
            reasons = Counter(all_rejected["reason"].tolist())
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
            files[ratings_file] = _file_counts(report.lines_read, report.inserted, report.duplicate,
                                                      all_rejected)
            report.files = files
            if not report.reconciles:  # would be a bug here, never bad input
                raise RuntimeError(f"ingest does not reconcile: {report.summary()}")
            encodings = {**parsed_files, ratings_file: ratings}
            conn.execute(
                sa.text(
                    "INSERT INTO ingest_batch_files (batch_id, source_file, input_sha256, encoding, lines_read,"
                    " stored, duplicate, rejected) VALUES (:id, :file, :sha, :enc, :read, :stored, :dup, :rej)"
                ),
                [{"id": batch_id, "file": name, "sha": encodings[name].sha256, "enc": encodings[name].encoding,
                  "read": c["lines_read"], "stored": c["stored"], "dup": c["duplicate"], "rej": c["rejected"]}
                 for name, c in files.items()],
            )
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


def interval_ingested(engine: Engine, start: datetime, end: datetime) -> bool:
    """Whether the ratings of [start, end) were loaded by successful batches (one or several,
    or an --all batch): the nightly plans a backfilled night only then."""
    start, end = _utc(start), _utc(end)
    if start is None or end is None or start >= end:
        raise ValueError(f"not an interval: [{start}, {end})")
    with engine.connect() as conn:
        return bool(conn.execute(statement("interval_ingested"), {"start": start, "end": end}).scalar_one())


def _file_counts(lines_read: int, stored: int, duplicate: int, rejected: pd.DataFrame) -> dict:
    counts = {"lines_read": lines_read, "stored": stored, "duplicate": duplicate, "rejected": len(rejected),
              "reasons": dict(Counter(rejected["reason"].tolist()))}
    if lines_read != stored + duplicate + len(rejected):  # a bug, never bad input
        raise RuntimeError(f"file counts do not reconcile: {counts}")
    return counts


def _copy(conn: sa.Connection, table: str, frame: pd.DataFrame, columns: list[str],
          text_columns: tuple[str, ...] = ()) -> None:
    """COPY a DataFrame as CSV. Text columns never read as NULL: a title or zip code
    that is literally \\N stays text."""
    buf = io.StringIO()
    frame[columns].to_csv(buf, header=False, index=False, na_rep="\\N")
    buf.seek(0)
    options = "FORMAT csv, NULL '\\N'" + (f", FORCE_NOT_NULL ({', '.join(text_columns)})" if text_columns else "")
    with raw_cursor(conn) as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH ({options})", buf)


_USER_COLUMNS = ["user_id", "gender", "age", "occupation", "zip"]


def _copy_nullable(conn: sa.Connection, table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    """COPY where a missing value (None, NA) is NULL and every present one is quoted text:
    in CSV an unquoted empty field is NULL and a quoted one is text, so an empty or
    literally \\N zip or title stays text."""
    def cell(value) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return ""
        return '"' + str(value).replace('"', '""') + '"'

    buf = io.StringIO()
    for row in frame[columns].itertuples(index=False, name=None):
        buf.write(",".join(cell(v) for v in row) + "\n")
    buf.seek(0)
    with raw_cursor(conn) as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)


def _upsert_users(conn: sa.Connection, users: pd.DataFrame) -> int:
    conn.exec_driver_sql(
        "CREATE TEMP TABLE stage_users (LIKE users INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    _copy_nullable(conn, "stage_users", users, _USER_COLUMNS)  # one row per id (parser)
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
    frame = movies.copy()
    frame["genres"] = frame["genres"].map(lambda g: None if g is None else _pg_array(g))  # None: unknown
    conn.exec_driver_sql("CREATE TEMP TABLE stage_movies (LIKE movies INCLUDING DEFAULTS) ON COMMIT DROP")
    _copy_nullable(conn, "stage_movies", frame, ["movie_id", "title", "year", "genres"])
    return conn.exec_driver_sql(
        "INSERT INTO movies SELECT * FROM stage_movies ON CONFLICT (movie_id) DO UPDATE"
        " SET title = EXCLUDED.title, year = EXCLUDED.year, genres = EXCLUDED.genres"
        " WHERE (movies.title, movies.year, movies.genres)"
        " IS DISTINCT FROM (EXCLUDED.title, EXCLUDED.year, EXCLUDED.genres)"
    ).rowcount


def _mark_repeats(rows: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Mark each parsed row against earlier ratings of the same (user, movie) in this
    input, in (time, line) order: 0 first, 1 identical repeat, 2 differing repeat. Time
    order makes intervals agree with --all. Returns the rows (in time order when some
    key repeats) and their marks."""
    key = pd.Series((rows["user_id"].to_numpy() << 31) | rows["movie_id"].to_numpy(), index=rows.index)
    repeat = key.duplicated(keep="first").to_numpy()
    if not repeat.any():  # the usual case: no sort
        return rows, np.zeros(len(rows), np.int8)
    rows = rows.sort_values(["ts", "line_no"], kind="stable")
    key = key.loc[rows.index]
    repeat = key.duplicated(keep="first").to_numpy()
    value = rows["rating_x2"] if "rating_x2" in rows else rows["rating"]
    identical = pd.DataFrame({"k": key, "r": value, "t": rows["ts"]}).duplicated(keep="first").to_numpy()
    return rows, np.where(repeat, np.where(identical, 1, 2), 0).astype(np.int8)


def _ids(conn: sa.Connection, table: str, column: str) -> np.ndarray:
    """Every id of users or movies (a few hundred thousand at most: one fetch)."""
    with raw_cursor(conn) as cur:
        cur.execute(f"SELECT {column} FROM {table}")
        return np.fromiter((row[0] for row in cur), np.int64)


def _add_ids(conn: sa.Connection, table: str, column: str, ids: np.ndarray) -> int:
    """Insert the ids not yet in users or movies (attributes NULL); return how many."""
    conn.exec_driver_sql(f"CREATE TEMP TABLE stage_{table}_ids ({column} integer) ON COMMIT DROP")
    _copy_binary(conn, f"stage_{table}_ids", [(column, ">i4", np.unique(ids))])
    return conn.exec_driver_sql(f"INSERT INTO {table} ({column}) SELECT {column} FROM stage_{table}_ids"
                                f" ON CONFLICT ({column}) DO NOTHING").rowcount


def _rating_columns(rows: pd.DataFrame) -> list[tuple[str, str, object]]:
    x2 = rows["rating_x2"] if "rating_x2" in rows else rows["rating"] * 2  # whole stars (ML-1M)
    return [("user_id", ">i4", rows["user_id"]), ("movie_id", ">i4", rows["movie_id"]),
            ("rating", ">i2", rows["rating"]), ("rating_x2", ">i2", x2)]


def _stage_ratings(conn: sa.Connection, rows: pd.DataFrame, repeat: np.ndarray) -> None:
    """COPY the parsed rows and their repeat marks into a temp table."""
    conn.exec_driver_sql(
        "CREATE TEMP TABLE stage_ratings (user_id integer, movie_id integer, rating smallint,"
        " rating_x2 smallint, ts bigint, line_no bigint, repeat smallint) ON COMMIT DROP"
    )
    _copy_binary(conn, "stage_ratings", _rating_columns(rows) + [
        ("ts", ">i8", rows["ts"]), ("line_no", ">i8", rows["line_no"]), ("repeat", ">i2", repeat)])


def _copy_binary(conn: sa.Connection, table: str, columns: list[tuple[str, str, object]],
                 chunk_rows: int = 1 << 16) -> None:
    """COPY integer columns (an array each, or one value for every row) in PostgreSQL's
    binary format, built by numpy (several times faster than writing CSV text) a chunk
    of rows at a time and streamed: memory is one chunk, not the whole payload (about 60
    bytes a rating, held three times over when built at once: 4 GiB at 25M). Values fit
    their types: the parser checked every range."""
    layout = [("fields", ">i2")]
    for name, dtype, _ in columns:
        layout += [(f"{name}_len", ">i4"), (name, dtype)]
    arrays = [(name, np.asarray(values)) for name, _, values in columns]  # 0-d: one value for every row
    n = next(len(values) for _, values in arrays if values.ndim)

    def parts():
        yield b"PGCOPY\n\xff\r\n\x00" + bytes(8)
        for lo in range(0, n, chunk_rows):
            records = np.empty(min(chunk_rows, n - lo), dtype=layout)
            records["fields"] = len(columns)
            for (name, dtype, _), (_, values) in zip(columns, arrays):
                records[f"{name}_len"] = np.dtype(dtype).itemsize
                records[name] = values[lo:lo + chunk_rows] if values.ndim else values
            yield records.tobytes()
        yield b"\xff\xff"

    with raw_cursor(conn) as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(c[0] for c in columns)}) FROM STDIN WITH (FORMAT binary)",
                        _Stream(parts()), size=1 << 20)


class _Stream:
    """A read()-able file over an iterator of byte strings (what copy_expert reads)."""

    def __init__(self, parts):
        self._parts, self._view = iter(parts), memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not len(self._view):
            part = next(self._parts, None)
            if part is None:
                return b""
            self._view = memoryview(part)
        size = len(self._view) if size is None or size < 0 else size
        out, self._view = self._view[:size], self._view[size:]
        return out.tobytes()


# Above this many staged ratings, the foreign keys of `ratings` are dropped for the
# insert and re-added (re-validated by one join) in the same transaction: row-by-row
# FK triggers cost ~15 s per million rows, the re-validation ~0.2 s.
BULK_INSERT_ROWS = 50_000
_RATINGS_FKS = {
    "ratings_user_id_fkey": "FOREIGN KEY (user_id) REFERENCES users",
    "ratings_movie_id_fkey": "FOREIGN KEY (movie_id) REFERENCES movies",
    "ratings_batch_id_fkey": "FOREIGN KEY (batch_id) REFERENCES ingest_batches",
}
# When a bulk insert is at least as large as the table it goes into (a first load, a
# backfill), its indexes are dropped too and built again afterwards: one sorted build
# instead of a random B-tree insert per row (rated_at's), measured at 5M ratings as
# 47 s -> 27 s for the insert with the builds. A nightly append keeps them in place.
# The primary key is rebuilt with them; the classification has already made every
# (user_id, movie_id) unique, and ADD PRIMARY KEY checks it again.
_RATINGS_INDEXES = """
SELECT 'ALTER TABLE ratings DROP CONSTRAINT ' || quote_ident(c.conname),
       'ALTER TABLE ratings ADD CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid)
FROM pg_constraint c WHERE c.conrelid = 'ratings'::regclass AND c.contype IN ('p', 'u')
UNION ALL
SELECT 'DROP INDEX ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i WHERE i.indrelid = 'ratings'::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""
INDEX_BUILD_MEMORY = "256MB"  # maintenance_work_mem for those builds, when the server's is lower


def _classify_and_insert(conn: sa.Connection, batch_id: int, staged_rows: int, users_implied: bool = False) -> dict:
    """Insert the staged plain inserts and return the counts by outcome and the lines to
    quarantine. The exceptions (rarely many) are classified first and returned with their
    lines; the plain inserts are then streamed into ratings in one INSERT ... SELECT."""
    rebuild = _loosen_ratings(conn, staged_rows) if staged_rows > BULK_INSERT_ROWS else []
    rows = conn.execute(statement("ingest_exceptions"), {"users_implied": users_implied}).all()
    exceptions = {outcome: (n, lines or []) for outcome, n, lines in rows}
    inserted = conn.execute(statement("ingest_plain_inserts"),
                            {"batch": batch_id, "in_key_order": not rebuild}).rowcount
    _restore(conn, rebuild)
    if inserted != staged_rows - sum(n for n, _ in exceptions.values()):
        raise RuntimeError("ratings changed under the ingest despite its lock")
    duplicate = exceptions.pop("duplicate", (0, []))[0]
    return {
        "inserted": inserted,
        "duplicate": duplicate,
        "rejected_lines": [(line, reason) for reason, (_, lines) in exceptions.items() for line in lines],
    }


def _restore(conn: sa.Connection, rebuild: list[str]) -> None:
    """Build again what _loosen_ratings dropped (indexes, then the foreign keys)."""
    if rebuild:
        _raise_setting(conn, "maintenance_work_mem", INDEX_BUILD_MEMORY)
    for statement_ in rebuild:
        conn.exec_driver_sql(statement_)


def _raise_setting(conn: sa.Connection, name: str, value: str) -> None:
    """Raise a memory setting to value for this transaction, never lowering the server's."""
    conn.execute(sa.text("SELECT set_config(:name, :v, true) WHERE"
                         " pg_size_bytes(current_setting(:name)) < pg_size_bytes(:v)"), {"name": name, "v": value})


# A first load into an empty ratings table meets no stored rating, so each row's outcome
# follows from the ids and the repeat marks alone (ingest_exceptions.sql's rules with
# no stored row): it is decided here and the inserts are COPYed straight into ratings,
# with no stage table and no INSERT ... SELECT. A test holds both paths to the same result.
_FIRST_LOAD_OUTCOMES = ("insert", "duplicate", "duplicate_in_file", "unknown_user", "unknown_movie")
_PG_EPOCH_S = 946_684_800  # 2000-01-01 UTC: timestamptz in binary COPY is microseconds since then


def _ratings_empty(conn: sa.Connection) -> bool:
    return conn.exec_driver_sql("SELECT NOT EXISTS (SELECT 1 FROM ratings)").scalar_one()


def _first_load(conn: sa.Connection, batch_id: int, rows: pd.DataFrame, repeat: np.ndarray,
                users_implied: bool, movie_known: np.ndarray | None = None) -> dict:
    user_known = np.isin(rows["user_id"].to_numpy(), _ids(conn, "users", "user_id"))
    if movie_known is None:
        movie_known = np.isin(rows["movie_id"].to_numpy(), _ids(conn, "movies", "movie_id"))
    outcome = np.select(
        [~user_known & (movie_known | (not users_implied)), ~movie_known, repeat == 0, repeat == 1],
        [3, 4, 0, 1], 2).astype(np.int8)  # indexes into _FIRST_LOAD_OUTCOMES
    counts = np.bincount(outcome, minlength=len(_FIRST_LOAD_OUTCOMES))
    new = rows if counts[0] == len(rows) else rows[outcome == 0]
    rebuild = _loosen_ratings(conn, len(rows))
    _copy_binary(conn, "ratings", _rating_columns(new) + [
        ("rated_at", ">i8", (new["ts"].to_numpy() - _PG_EPOCH_S) * 1_000_000),
        ("batch_id", ">i8", np.int64(batch_id)), ("source_line", ">i8", new["line_no"])])
    _restore(conn, rebuild)
    lines = rows["line_no"].to_numpy()
    return {
        "inserted": int(counts[0]),
        "duplicate": int(counts[1]),
        "rejected_lines": [(int(line), _FIRST_LOAD_OUTCOMES[code]) for code in (2, 3, 4)
                           for line in lines[outcome == code]],
    }


def _loosen_ratings(conn: sa.Connection, staged_rows: int) -> list[str]:
    """For a bulk insert, drop the ratings FKs and, when the insert is at least as large
    as the table, its indexes; return the statements that restore them (indexes first),
    run after the insert in the same transaction. Nothing is dropped (and [] returned)
    when their exclusive lock is not granted within BULK_DDL_LOCK_TIMEOUT_S (an
    analyst's open transaction on a view over ratings holds a conflicting lock): the
    insert then keeps them all (slower)."""
    smaller = conn.execute(sa.text("SELECT count(*) FROM (SELECT 1 FROM ratings LIMIT :n) AS t"),
                           {"n": staged_rows}).scalar_one() < staged_rows
    indexes = [tuple(row) for row in conn.exec_driver_sql(_RATINGS_INDEXES).all()] if smaller else []
    previous = conn.exec_driver_sql("SELECT current_setting('lock_timeout')").scalar_one()
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(BULK_DDL_LOCK_TIMEOUT_S * 1000))}")
        conn.exec_driver_sql(
            "ALTER TABLE ratings " + ", ".join(f"DROP CONSTRAINT {name}" for name in _RATINGS_FKS)
        )
        for drop, _ in indexes:
            conn.exec_driver_sql(drop)
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != "55P03":
            raise
        savepoint.rollback()
        log.warning("ratings is locked by another session: inserting with foreign keys in place (slower)")
        return []
    savepoint.commit()
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous})
    return [create for _, create in indexes] + [
        "ALTER TABLE ratings " + ", ".join(f"ADD CONSTRAINT {n} {d}" for n, d in _RATINGS_FKS.items())]


def _quarantine(conn: sa.Connection, batch_id: int, file_name: str, parsed: source.Parsed,
                rejected: pd.DataFrame, stored_lines: np.ndarray) -> None:
    """Record this batch's rejected lines of one file and resolve the older ones it stored.

    A rejected line whose bytes already sit unresolved in rejected_rows at the same
    line is not copied again: its sighting points at that row.
    """
    open_rows = conn.execute(
        sa.text("SELECT batch_id, line_no, raw_bytes FROM rejected_rows"
                " WHERE source_file = :f AND resolved_by_batch IS NULL"),
        {"f": file_name},
    ).all()
    open_by_line: dict[int, list[tuple[int, bytes]]] = {}
    for b, line_no, raw in open_rows:
        open_by_line.setdefault(line_no, []).append((b, bytes(raw)))

    resolved = []
    if open_by_line:
        candidates = np.intersect1d(stored_lines, np.fromiter(open_by_line, np.int64))
        for line_no in candidates.tolist():
            now = parsed.line_bytes(line_no)
            resolved += [(b, line_no) for b, raw in open_by_line[line_no] if raw == now]
    if resolved:
        conn.execute(
            sa.text("UPDATE rejected_rows SET resolved_by_batch = :batch"
                    " WHERE batch_id = :b AND source_file = :f AND line_no = :n"),
            [{"batch": batch_id, "b": b, "f": file_name, "n": n} for b, n in resolved],
        )
    if rejected.empty:
        return

    recorded = []
    for line_no, raw in zip(rejected["line_no"].tolist(), rejected["raw_bytes"].tolist()):
        recorded.append(next((b for b, old in open_by_line.get(line_no, ()) if old == raw), batch_id))
    frame = rejected.assign(batch_id=batch_id, source_file=file_name, recorded_batch=recorded)
    new = frame[frame["recorded_batch"] == batch_id].copy()
    if not new.empty:
        new["raw_bytes"] = ["\\x" + raw.hex() for raw in new["raw_bytes"]]  # bytea hex input
        conn.exec_driver_sql(
            "CREATE TEMP TABLE IF NOT EXISTS stage_rejected (LIKE rejected_rows INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        conn.exec_driver_sql("TRUNCATE stage_rejected")
        _copy(conn, "stage_rejected", new, ["source_file", "line_no", "batch_id", "raw_line", "raw_bytes", "reason"],
              ("raw_line", "reason"))
        conn.exec_driver_sql("INSERT INTO rejected_rows SELECT * FROM stage_rejected")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS stage_sightings (LIKE rejected_sightings) ON COMMIT DROP"
    )
    conn.exec_driver_sql("TRUNCATE stage_sightings")
    _copy(conn, "stage_sightings", frame, ["batch_id", "source_file", "line_no", "reason", "recorded_batch"],
          ("reason",))
    conn.exec_driver_sql("INSERT INTO rejected_sightings SELECT * FROM stage_sightings")
