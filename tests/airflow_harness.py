"""Run the real Airflow CLI (and its long-running components) in a throw-away AIRFLOW_HOME.

    home = AirflowHome.create(tmp_path / "airflow", recpipe_env={...})   # sqlite metadata DB
    home.migrate()
    home.airflow("dags", "test", "recpipe_nightly", "2000-12-01")

Every command is a subprocess of the venv's `airflow` with an environment built here:
the repository's dags/ folder, no example DAGs, the metadata DB (sqlite file, or a
PostgreSQL URL), and the RECPIPE_* settings of the recpipe tasks.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"
VENV_BIN = Path(sys.executable).parent
AIRFLOW_BIN = str(VENV_BIN / "airflow")
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
# The long-running Airflow services of the compose file (airflow-init, airflow-cli and
# flower are one-shot or optional tools).
COMPOSE_COMPONENTS = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                      "airflow-worker", "airflow-worker-gpu")
_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _compose_value(text: str) -> str:
    """Compose's interpolation: ${VAR:-default} (the default when VAR is unset or empty), $$ → $."""
    expanded = _COMPOSE_VAR.sub(lambda m: os.environ.get(m[1]) or (m[2] or ""), str(text))
    return expanded.replace("$$", "$")


def compose_services(path: Path = COMPOSE_FILE) -> dict[str, tuple[list[str], dict[str, str]]]:
    """(airflow arguments, environment) of every service that runs the Airflow image with a
    command, exactly as docker-compose.yaml gives them (anchors and `<<` merges resolved)."""
    import yaml

    services = yaml.safe_load(path.read_text())["services"]
    found = {}
    for name, service in services.items():
        command, environment = service.get("command"), service.get("environment") or {}
        if command is None or "AIRFLOW__CORE__EXECUTOR" not in environment:
            continue  # postgres, redis: this machine's own servers stand in for them
        args = shlex.split(_compose_value(command)) if isinstance(command, str) else \
            [_compose_value(a) for a in command]
        found[name] = (args, {k: _compose_value(v) for k, v in environment.items()})
    return found


def scratch_postgres_database(server_url: str, prefix: str = "airflow_test") -> tuple[str, callable]:
    """Create an empty database on `server_url`'s server; returns (its URL, drop function)."""
    import sqlalchemy as sa

    server = sa.engine.make_url(server_url)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


@dataclass
class AirflowHome:
    root: Path
    env: dict[str, str]
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        metadata_url: str | None = None,
        recpipe_env: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> "AirflowHome":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "RECPIPE_"))
        }
        env.update(
            AIRFLOW_HOME=str(root),
            AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_url or f"sqlite:///{root / 'airflow.db'}",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(root / "logs"),
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            # One fixed secret so that every component (api-server, scheduler, workers)
            # signs and accepts the same Execution API tokens.
            AIRFLOW__API_AUTH__JWT_SECRET="recpipe-test-" + secrets.token_hex(16),
            AIRFLOW__CORE__FERNET_KEY="",
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )
        env.update(recpipe_env or {})
        env.update(extra or {})
        return cls(root=root, env=env)

    # -- one-shot commands ---------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None):
        started = time.monotonic()
        proc = subprocess.run(
            [AIRFLOW_BIN, *args],
            env={**self.env, **(env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        proc.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
        if check and proc.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                f"\n--- stderr ---\n{proc.stderr[-12000:]}"
            )
        return proc

    def migrate(self) -> None:
        self.airflow("db", "migrate", timeout=300)

    # -- long-running components ---------------------------------------------------------
    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """Start `airflow <args>` in its own process group; output goes to <root>/<name>.log."""
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [AIRFLOW_BIN, *args],
            env={**self.env, **(env or {})},
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append((name, proc))
        return proc

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def task_logs(self, dag_id: str, chars: int = 6000) -> str:
        """The end of every task log of `dag_id` (for failure messages)."""
        logs = sorted((self.root / "logs").glob(f"dag_id={dag_id}/**/*.log"))
        return "".join(f"--- {p.relative_to(self.root)}\n{p.read_text(errors='replace')[-chars:]}\n" for p in logs)

    def check_running(self) -> None:
        for name, proc in self.processes:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop_all(self, grace: float = 30) -> None:
        """Stop what start() started: SIGTERM to each process group, then SIGKILL."""
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for _, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.processes:
            try:  # the group may still hold children (task processes) after its leader exits
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.processes.clear()


def wait_for(predicate, *, timeout: float, interval: float = 2.0, what: str = "condition", on_tick=None):
    """Poll `predicate()` until it returns a truthy value (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if on_tick is not None:
            on_tick()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except Exception:
        return False


def worker_hostname() -> str:
    """`[core] hostname_callable` for several workers on one machine: the name given to each
    worker process in RECPIPE_TEST_WORKER_HOSTNAME (its Celery hostname), else the FQDN."""
    return os.environ.get("RECPIPE_TEST_WORKER_HOSTNAME") or socket.getfqdn()
