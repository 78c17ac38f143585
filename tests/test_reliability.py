"""Fault injection on a real PostgreSQL (issue #10): kill -9 of the `recpipe` command in
the middle of its transaction, the database stopped in the middle of a night, and a
planted password through a real Airflow run.

The kill points are made deterministic with triggers that call pg_sleep: the test waits
until the server reports the session in PgSleep, then kills the client with SIGKILL.
The orphaned server backend finishes its statement, finds its client gone and rolls
back; the test waits for it to disappear before looking. Each test prints its figures
(rows, seconds) for the README's *Reliability* table.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from recpipe import db
from recpipe.synthetic import SyntheticSpec, write_movielens

SYSTEM_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PASSWORD = "Fault-Inj3cted-S3cret"
HOLD_S = 4  # how long a trigger holds the transaction: the kill lands inside it
SPEC = SyntheticSpec(users=400, movies=120, ratings_per_user=40, days=300, seed=11)
# Lines every batch must quarantine (and store once), so the quarantine is compared too.
HOSTILE_RATINGS = b"1::2::9::975000000\n\n7::x::3::975000000\n1::5::4\n99999::1::4::975000000\n"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _server() -> sa.engine.URL:
    url = sa.engine.make_url(os.environ.get("RECPIPE_TEST_DATABASE_URL") or SYSTEM_PG)
    try:
        probe = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with probe.connect() as conn:
            superuser = conn.exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar()
        probe.dispose()
    except sa.exc.OperationalError as exc:
        pytest.fail(f"fault injection needs a PostgreSQL server it can create databases on ({url!r}): {exc}")
    if not superuser:  # event triggers and pg_sleep triggers on the pipeline's tables
        pytest.fail(f"fault injection needs a superuser on {url!r}")
    return url


@pytest.fixture
def scratch_db():
    """A fresh migrated database per test: its URL (no password), dropped afterwards."""
    server = _server()
    name = f"recpipe_fault_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    db.upgrade(engine)
    yield url, engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    folder = write_movielens(tmp_path_factory.mktemp("ml-fault"), SPEC)
    with open(folder / "ratings.dat", "ab") as fh:
        fh.write(HOSTILE_RATINGS)
    return folder


def _env(url: str, home: Path, source: Path | None = None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECPIPE_")}
    env.update(RECPIPE_DATABASE_URL=url, RECPIPE_HOME=str(home), PYTHONPATH=str(Path(__file__).parents[1]),
               TF_CPP_MIN_LOG_LEVEL="3", **extra)
    if source is not None:
        env["RECPIPE_SOURCE_DIR"] = str(source)
    return env


def recpipe(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recpipe.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    done.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
    return done


def _sleeping_backend(engine, timeout: float = 120) -> int:
    """pid of the server backend of this database held in pg_sleep (by a test trigger)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            pid = conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
                " AND pid <> pg_backend_pid()")).scalar()
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise TimeoutError("no session reached the test trigger's pg_sleep")


def _kill_while_held(args: list[str], env: dict, engine, while_held=None) -> tuple[int, float]:
    """Start `recpipe ARGS`, wait until its transaction sits in a test trigger (then call
    while_held()), SIGKILL the client, then wait until the orphaned backend is gone.
    Returns (the client's exit status, seconds from the kill until the backend was gone)."""
    proc = subprocess.Popen([sys.executable, "-m", "recpipe.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        backend = _sleeping_backend(engine)
    except TimeoutError:
        proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
        raise AssertionError(f"recpipe {' '.join(args)} never reached the held point:\n{out[-3000:]}")
    if while_held is not None:
        try:
            while_held()
        except BaseException:
            proc.kill()
            raise
    os.kill(proc.pid, signal.SIGKILL)
    status = proc.wait(timeout=30)
    killed_at = time.perf_counter()
    deadline = time.monotonic() + HOLD_S + 60
    with engine.connect() as conn:
        while conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": backend}).scalar():
            assert time.monotonic() < deadline, f"backend {backend} of the killed client is still alive"
            time.sleep(0.1)
            conn.commit()
    return status, time.perf_counter() - killed_at


def _no_lock_held(engine) -> list[str]:
    """The lock rows; each must be free (FOR UPDATE NOWAIT fails on a held one), and no
    other session of the database may still be in a transaction."""
    with engine.begin() as conn:
        names = conn.execute(sa.text("SELECT name FROM pipeline_locks ORDER BY name FOR UPDATE NOWAIT")).scalars().all()
        others = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar()
    assert others == 0
    return names


TABLE_SIGNATURE = {
    "users": "SELECT count(*), md5(string_agg(concat_ws(':', user_id, gender, age, occupation, zip), ','"
             " ORDER BY user_id)) FROM users",
    "movies": "SELECT count(*), md5(string_agg(concat_ws(':', movie_id, title, year, genres), ','"
              " ORDER BY movie_id)) FROM movies",
    "ratings": "SELECT count(*), md5(string_agg(concat_ws(':', user_id, movie_id, rating,"
               " extract(epoch FROM rated_at)::bigint, source_line), ',' ORDER BY user_id, movie_id)) FROM ratings",
    "rejected_rows": "SELECT count(*), md5(string_agg(concat_ws(':', source_file, line_no, encode(raw_bytes, 'hex'),"
                     " reason, resolved_by_batch IS NULL), ',' ORDER BY source_file, line_no)) FROM rejected_rows",
    "rejected_sightings": "SELECT count(*), md5(string_agg(concat_ws(':', source_file, line_no, reason), ','"
                          " ORDER BY source_file, line_no)) FROM rejected_sightings",
    "ingest_batches": "SELECT count(*), md5(string_agg(concat_ws(':', lines_read, inserted, duplicate, rejected,"
                      " finished_at IS NOT NULL), ',')) FROM ingest_batches",
    "ingest_batch_files": "SELECT count(*), md5(string_agg(concat_ws(':', source_file, input_sha256, lines_read,"
                          " stored, duplicate, rejected), ',' ORDER BY source_file)) FROM ingest_batch_files",
}


def _tables(engine) -> dict[str, tuple]:
    """Row count and checksum of every table an ingest writes (batch ids left out: a
    killed batch used up a sequence value)."""
    with engine.connect() as conn:
        return {table: tuple(conn.exec_driver_sql(sql).one()) for table, sql in TABLE_SIGNATURE.items()}


# ---------------------------------------------------------------------------------------
# a. kill -9 of an ingest
# ---------------------------------------------------------------------------------------
HOLD_FUNCTION = f"""
CREATE FUNCTION recpipe_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction: a row trigger would otherwise sleep for every row.
    IF current_setting('recpipe_test.held', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('recpipe_test.held', 'yes', true);
        PERFORM pg_sleep({HOLD_S});
    END IF;
    RETURN NEW;
END $$;
"""
# stage_ratings is a temporary table created inside the ingest's transaction: an event
# trigger puts the holding trigger on it as it is created, so the hold is inside its COPY.
HOLD_DURING_COPY = """
CREATE FUNCTION recpipe_test_attach() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE created record;
BEGIN
    FOR created IN SELECT object_identity FROM pg_event_trigger_ddl_commands()
                   WHERE command_tag = 'CREATE TABLE' AND object_identity ~ '[.]stage_ratings$' LOOP
        EXECUTE 'CREATE TRIGGER recpipe_test_hold BEFORE INSERT ON ' || created.object_identity
             || ' FOR EACH ROW EXECUTE FUNCTION public.recpipe_test_hold()';
    END LOOP;
END $$;
CREATE EVENT TRIGGER recpipe_test_attach ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION recpipe_test_attach();
"""
KILL_POINTS = {
    # inside the COPY of the parsed ratings into the staging table
    "during_copy": HOLD_DURING_COPY,
    # staged; in the set-based classification that inserts into ratings
    "after_staging": "CREATE TRIGGER recpipe_test_hold BEFORE INSERT ON ratings FOR EACH STATEMENT"
                     " EXECUTE FUNCTION recpipe_test_hold();",
    # everything written; the batch's closing UPDATE is the last statement before COMMIT
    "before_commit": "CREATE TRIGGER recpipe_test_hold AFTER UPDATE ON ingest_batches FOR EACH STATEMENT"
                     " EXECUTE FUNCTION recpipe_test_hold();",
}
DROP_HOLDS = """
DROP EVENT TRIGGER IF EXISTS recpipe_test_attach;
DROP FUNCTION IF EXISTS recpipe_test_attach();
DROP TRIGGER IF EXISTS recpipe_test_hold ON ratings;
DROP TRIGGER IF EXISTS recpipe_test_hold ON ingest_batches;
DROP FUNCTION IF EXISTS recpipe_test_hold();
"""


@pytest.fixture(scope="module")
def clean_ingest(source_dir, tmp_path_factory) -> dict:
    """The tables after one clean `recpipe ingest --all` of the source, in a database of its own."""
    server = _server()
    name = f"recpipe_fault_ref_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        done = recpipe("ingest", "--all", env=_env(url, tmp_path_factory.mktemp("home"), source_dir))
        assert done.returncode == 0, done.stderr[-3000:]
        engine = sa.create_engine(url)
        tables = _tables(engine)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    print(f"clean ingest: {tables['ratings'][0]} ratings, {tables['rejected_rows'][0]} quarantined,"
          f" {done.elapsed:.1f}s")
    assert tables["ratings"][0] > 10_000 and tables["rejected_rows"][0] == 5
    return tables


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_an_ingest_killed_mid_transaction_leaves_nothing_and_a_rerun_equals_one_clean_ingest(
        point, scratch_db, source_dir, clean_ingest, tmp_path):
    url, engine = scratch_db
    env = _env(url, tmp_path / "home", source_dir)
    empty = _tables(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(HOLD_FUNCTION)
        conn.exec_driver_sql(KILL_POINTS[point])
    status, orphan_s = _kill_while_held(["ingest", "--all"], env, engine)
    assert status == -signal.SIGKILL
    with engine.begin() as conn:
        conn.exec_driver_sql(DROP_HOLDS)
    assert _tables(engine) == empty, "a killed ingest committed something"
    assert _no_lock_held(engine) == ["ingest"]

    rerun = recpipe("ingest", "--all", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _tables(engine) == clean_ingest
    assert _no_lock_held(engine) == ["ingest"]
    print(f"ingest killed {point}: 0 rows committed, backend gone {orphan_s:.1f}s after the kill;"
          f" rerun stored {clean_ingest['ratings'][0]} ratings (= one clean ingest) in {rerun.elapsed:.1f}s")


# ---------------------------------------------------------------------------------------
# b. kill -9 of a publication
# ---------------------------------------------------------------------------------------
NIGHT_1, NIGHT_2 = datetime(2000, 11, 1, tzinfo=timezone.utc), datetime(2000, 12, 1, tzinfo=timezone.utc)
LIVE_LISTS = ("SELECT count(*), count(DISTINCT user_id), min(as_of), max(as_of),"
              " md5(string_agg(concat_ws(':', run_id, user_id, rank, movie_id), ',' ORDER BY user_id, rank))"
              " FROM recommendations_current WHERE model = 'popularity'")


def test_a_publication_killed_mid_transaction_keeps_the_previous_night_live_and_a_rerun_publishes(
        scratch_db, source_dir, tmp_path):
    from recpipe import pipeline
    from recpipe.config import Settings
    from recpipe.ingest import ingest

    url, engine = scratch_db
    settings = Settings(database_url=url, home=tmp_path / "home", source_dir=source_dir)
    ingest(engine, source_dir)
    pipeline.run_nightly(settings, pipeline.make_plan(settings, NIGHT_1, models=("popularity",)))
    with engine.connect() as conn:
        before = conn.exec_driver_sql(LIVE_LISTS).one()
    assert before[0] == 10 * before[1] > 0 and before[2] == NIGHT_1
    # The next night is trained and gated; its publication is what gets killed.
    plan = pipeline.make_plan(settings, NIGHT_2, models=("popularity",))
    run_id = pipeline.train_model(settings, plan, "popularity", pipeline.night_inputs(None, None))["run_id"]
    pipeline.evaluate(settings, plan, [run_id])
    assert pipeline.gate(settings, plan, [run_id])["promoted"] == [run_id]
    with engine.begin() as conn:
        conn.exec_driver_sql(HOLD_FUNCTION)
        # Held inside the one transaction that attaches the new lists and switches them live.
        conn.exec_driver_sql("CREATE TRIGGER recpipe_test_hold BEFORE INSERT OR UPDATE ON published_runs"
                             " FOR EACH STATEMENT EXECUTE FUNCTION recpipe_test_hold()")
    env = _env(url, settings.home, source_dir)
    publish = ["publish", "--as-of", NIGHT_2.date().isoformat()]

    def readers_see_the_previous_night():  # while the publication holds its transaction open
        with engine.connect() as conn:
            assert conn.exec_driver_sql(LIVE_LISTS).one() == before

    status, orphan_s = _kill_while_held(publish, env, engine, readers_see_the_previous_night)
    assert status == -signal.SIGKILL
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER recpipe_test_hold ON published_runs; DROP FUNCTION recpipe_test_hold()")
        assert conn.exec_driver_sql(LIVE_LISTS).one() == before
        assert conn.execute(sa.text("SELECT count(*) FROM recommendations WHERE run_id = :r"), {"r": run_id}).scalar() == 0
    assert _no_lock_held(engine) == ["ingest", "publish.popularity"]

    rerun = recpipe(*publish, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with engine.connect() as conn:
        after = conn.exec_driver_sql(LIVE_LISTS).one()
        live = conn.execute(sa.text("SELECT run_id FROM published_runs WHERE model = 'popularity'")).scalar()
    assert live == run_id and after[2] == after[3] == NIGHT_2 and after[0] == 10 * after[1] >= before[1]
    print(f"publish killed mid-transaction: night {NIGHT_1:%Y-%m-%d} stayed live ({before[0]} rows, {before[1]} users,"
          f" 0 lost), backend gone {orphan_s:.1f}s after the kill; rerun published {after[0]} rows in"
          f" {rerun.elapsed:.1f}s")


# ---------------------------------------------------------------------------------------
# c. the database stopped in the middle of a night
# ---------------------------------------------------------------------------------------
FAST = '{"autoint": {"batch_size": 64, "embed_dim": 8, "dnn_units": [16]},' \
       ' "gru4rec": {"batch_size": 16, "hidden": 16, "embedding_dim": 16}}'
NIGHT_STAGES = {"plan", "rebuild_encodings", "rebuild_sessions", "evaluate", "gate", "rebuild_refit_inputs",
                "check_refits", "publish", "notify", "report",
                *(f"train_{m}" for m in ("popularity", "ease", "itemknn", "autoint", "gru4rec"))}
# What TensorFlow's C++ runtime writes to stderr when it loads, before any Python code can
# stop it (TF_CPP_MIN_LOG_LEVEL does not silence these): not recpipe's lines.
TENSORFLOW_BANNER = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ",
                     "To enable the following instructions:")
# libpq's own line for a connection whose backend is told to stop right after it sent
# ReadyForQuery: libpq reads the error while still inside PQconnectdb, where only its
# default notice processor (stderr) exists; psycopg2 installs its own just after.
# Seen once in 90 stops timed to land inside a query, and reproduced with a fake server
# sending ReadyForQuery and the error in one packet; recpipe cannot intercept it.
LIBPQ_STARTUP_NOTICE = "FATAL:  terminating connection due to administrator command"


def _pg_bin() -> Path:
    found = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                                                       reverse=True)), None)
    if found is None:
        pytest.skip("no pg_ctl/initdb on this machine: the stopped-database test needs its own cluster")
    return Path(found).parent


class Cluster:
    """A throw-away PostgreSQL cluster of this test (trust auth, its own port)."""

    def __init__(self):
        self.bin = _pg_bin()
        # Under /tmp itself: pytest's tmp_path is private to root, and the server cannot run as root.
        self.root = Path(tempfile.mkdtemp(prefix="recpipe-cluster-"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "server.log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return sa.engine.URL.create("postgresql+psycopg2", "postgres", password, "127.0.0.1", self.port,
                                    database).render_as_string(hide_password=False)

    def remove(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    made = Cluster()
    made.start()
    yield made
    made.remove()


def test_the_database_stopped_mid_night_is_one_line_and_a_rerun_publishes(cluster, source_dir, tmp_path):
    admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE recpipe")
    admin.dispose()
    url = cluster.url("recpipe", PASSWORD)  # trust auth: the password is only there to be masked
    env = _env(url, tmp_path / "home", source_dir)
    assert recpipe("ingest", "--all", env=env).returncode == 0
    night = ["run", "--as-of", NIGHT_2.date().isoformat(), "--epochs", "1", "--overrides", FAST]
    proc = subprocess.Popen([sys.executable, "-m", "recpipe.cli", *night], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + 300
    with engine.connect() as conn:  # stop it once the night has trained something
        while not conn.exec_driver_sql("SELECT count(*) FROM model_runs").scalar():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
            conn.commit()
    started = time.perf_counter()
    cluster.stop()
    stdout, stderr = proc.communicate(timeout=300)
    failed_after = time.perf_counter() - started
    ours = [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(TENSORFLOW_BANNER) and line != LIBPQ_STARTUP_NOTICE]
    assert proc.returncode == 1, stderr[-3000:]
    assert len(ours) == 1 and "Traceback" not in stderr, stderr[-3000:]
    line = ours[0]
    stage = line.split("(stage ", 1)[1].split(")", 1)[0] if "(stage " in line else None
    assert stage in NIGHT_STAGES, line
    assert "database is unreachable or failed" in line
    assert f"postgres:***@127.0.0.1:{cluster.port}/recpipe" in line and PASSWORD not in stdout + stderr

    cluster.start()
    rerun = recpipe(*night, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with engine.connect() as conn:
        live = conn.execute(sa.text("SELECT p.model, r.as_of FROM published_runs p JOIN model_runs r USING (run_id)"
                                    " ORDER BY p.model")).all()
        users = conn.exec_driver_sql("SELECT count(DISTINCT user_id) FROM recommendations_current").scalar()
        ratings = conn.exec_driver_sql("SELECT count(*) FROM ratings").scalar()
    engine.dispose()
    assert live and all(as_of == NIGHT_2 for _, as_of in live) and users == SPEC.users
    assert ratings == SPEC.users * SPEC.ratings_per_user  # the stop lost no stored rating
    print(f"database stopped in stage {stage}: exit 1 {failed_after:.1f}s after the stop, one line: {line}\n"
          f"rerun after the restart published {[m for m, _ in live]} for {users} users in {rerun.elapsed:.1f}s")


# ---------------------------------------------------------------------------------------
# d. a planted password through a real Airflow run
# ---------------------------------------------------------------------------------------
@pytest.fixture
def password_role():
    """A login role with a password owning a fresh database; its URL with the password.
    (The server trusts local connections, so the password is never checked, only carried.)"""
    server = _server()
    role = f"recpipe_pw_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.exec_driver_sql(f'CREATE DATABASE "{role}" OWNER {role}')
    url = server.set(username=role, password=PASSWORD, database=role).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)')
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
    admin.dispose()



def test_no_airflow_output_or_task_log_holds_the_database_password(password_role, source_dir, tmp_path):
    """A successful and a failing run through `airflow dags test`: the task runs in the
    command's own process and its log is the command's output (with `--use-executor`, which
    writes log files under AIRFLOW_HOME/logs, the command hung now and then after its task
    ended: not a test to gate CI on). Every file under AIRFLOW_HOME is searched too."""
    from airflow_harness import AirflowHome

    home = AirflowHome.create(tmp_path / "airflow", recpipe_env={
        "RECPIPE_DATABASE_URL": password_role, "RECPIPE_SOURCE_DIR": str(source_dir),
        "RECPIPE_HOME": str(tmp_path / "home"), "RECPIPE_TASK_RETRIES": "0",
        # one Asset for both runs, although the failing one names another database
        "RECPIPE_RATINGS_ASSET_URI": "postgres://127.0.0.1:5432/recpipe_reliability/public/ratings"})
    home.migrate()
    # A failing task too: the same role and password, a database that does not exist (the
    # error, its traceback and the failure callback's own failure all go to the task log).
    missing = sa.engine.make_url(password_role).set(database="recpipe_no_such_db").render_as_string(
        hide_password=False)
    started = time.perf_counter()
    ok = home.airflow("dags", "test", "recpipe_ingest", "2000-09-01", check=False, timeout=240)
    failed = home.airflow("dags", "test", "recpipe_ingest", "2000-09-02", check=False, timeout=240,
                          env={"RECPIPE_DATABASE_URL": missing})
    seconds = time.perf_counter() - started
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-5000:]
    assert failed.returncode != 0, failed.stdout[-3000:] + failed.stderr[-3000:]
    engine = sa.create_engine(password_role, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:  # the successful run really used the planted URL
        assert conn.exec_driver_sql("SELECT count(*) FROM ingest_batches").scalar() == 1
    engine.dispose()
    assert "reconciled" in ok.stdout + ok.stderr  # the task's own log lines are in the output
    task_logs = sorted((home.root / "logs").glob("dag_id=recpipe_ingest/*/task_id=ingest/attempt=*.log"))
    # the failure's own text, and the failure callback's, reached the output
    assert "recpipe_no_such_db" in failed.stdout + failed.stderr
    assert "the recpipe database is unreachable" in failed.stdout + failed.stderr  # the callback's fallback
    files = sorted(p for p in home.root.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".txt"))
    captured = {"output of the two runs": ok.stdout + ok.stderr + failed.stdout + failed.stderr,
                **{str(p.relative_to(home.root)): p.read_text(errors="replace") for p in files}}
    hits = {where: text.count(PASSWORD) for where, text in captured.items() if PASSWORD in text}
    assert hits == {}, hits
    print(f"airflow dags test recpipe_ingest with a planted password (one run ok, one failed):"
          f" {len(task_logs)} task logs + {len(files) - len(task_logs)} other log files +"
          f" the runs' output, {sum(len(t) for t in captured.values()):,} characters searched, 0 hits;"
          f" {seconds:.0f}s")
