"""docker-compose.yaml and Dockerfile: structure only (no Docker engine runs in CI)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LONG_RUNNING = [
    "postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu",
]
AIRFLOW_SERVICES = [s for s in LONG_RUNNING if s.startswith("airflow-")] + ["airflow-init"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _queues(service: dict) -> list[str]:
    cmd = _command(service)
    for flag in ("-q", "--queues"):
        if flag in cmd:
            return cmd[cmd.index(flag) + 1].split(",")
    return ["default"]  # Airflow's [operators] default_queue


def test_yaml_parses_with_common_anchor(compose):
    raw = (REPO / "docker-compose.yaml").read_text()
    assert "x-airflow-common:\n  &airflow-common" in raw
    assert "x-airflow-common" in compose and "services" in compose


def test_services_present(services):
    missing = set(LONG_RUNNING + ["airflow-init"]) - set(services)
    assert not missing, missing
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:")


def test_airflow_services_share_celery_configuration(services):
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or \
            env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:"), name
        assert "postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/execution")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], name  # one secret for all components


def test_both_databases_configured(services):
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert re.match(r"postgresql://recpipe:.+@postgres:5432/recpipe$", env["AIRFLOW_CONN_RECPIPE_DB"]), name
    init = services["airflow-init"]
    script = "\n".join(_command(init))
    assert "CREATE DATABASE recpipe" in script
    assert "recpipe db upgrade" in script
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"  # Airflow's own metadata DB


def test_workers_listen_on_default_and_gpu_queues(services):
    assert _command(services["airflow-worker"])[:2] == ["celery", "worker"]
    assert _queues(services["airflow-worker"]) == ["default"]
    gpu = services["airflow-worker-gpu"]
    assert _command(gpu)[:2] == ["celery", "worker"]
    assert _queues(gpu) == ["gpu"]
    assert gpu["environment"]["RECPIPE_GPU_QUEUE"] == "gpu"


def test_gpu_worker_reserves_an_nvidia_gpu_and_cuda_tensorflow(services):
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "and-cuda" in gpu["build"]["args"]["TENSORFLOW_PACKAGE"]
    assert "and-cuda" not in services["airflow-worker"]["build"]["args"]["TENSORFLOW_PACKAGE"]
    assert gpu["image"] != services["airflow-worker"]["image"]


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), name


def test_worker_healthchecks_ping_their_own_celery_hostname(services):
    for name, prefix in (("airflow-worker", "default@"), ("airflow-worker-gpu", "gpu@")):
        cmd = _command(services[name])
        hostname = cmd[cmd.index("--celery-hostname") + 1]
        assert hostname.startswith(prefix)
        # "$$" is Compose's escape for a literal "$": the container's shell expands ${HOSTNAME}.
        assert f'inspect ping -d "{prefix}$${{HOSTNAME}}"' in " ".join(services[name]["healthcheck"]["test"])


def test_dags_and_artifacts_shared_by_scheduler_and_workers(services, compose):
    def mounts(name):
        out = {}
        for spec in services[name]["volumes"]:
            spec = re.sub(r":(ro|rw)$", "", spec)
            source, target = spec.rsplit(":", 1)  # a source may hold ${VAR:-default}
            out[target] = source
        return out

    ref = mounts("airflow-scheduler")
    assert ref["/opt/airflow/dags"].endswith("/dags")
    assert ref["/opt/recpipe/home"] == "recpipe-home" and "recpipe-home" in compose["volumes"]
    for name in ("airflow-worker", "airflow-worker-gpu", "airflow-dag-processor", "airflow-init"):
        m = mounts(name)
        for target in ("/opt/airflow/dags", "/opt/recpipe/home", "/opt/recpipe/data"):
            assert m[target] == ref[target], (name, target)
    env = services["airflow-worker"]["environment"]
    assert env["RECPIPE_HOME"].startswith("/opt/recpipe/home")
    assert env["RECPIPE_SOURCE_DIR"].startswith("/opt/recpipe/data")


def test_long_running_airflow_services_wait_for_init(services):
    for name in AIRFLOW_SERVICES:
        if name == "airflow-init":
            continue
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["apache/airflow:3.3.2-python3.11"]
    assert re.search(r"pip install[^\n]*-r /tmp/requirements.txt", text)
    assert "requirements.txt" in text
    assert re.search(r"pip install[^\n]*-e /opt/recpipe-src", text)
    assert re.search(r"^ARG TENSORFLOW_PACKAGE=", text, re.M)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
