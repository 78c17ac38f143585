"""The Airflow layer: DAG structure (parsed by Airflow's own DagBag), light imports,
alert notifications through Airflow notifiers, and real `airflow dags test` runs."""
from __future__ import annotations

import email
from datetime import timedelta
import json
import os
import socketserver
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_harness import DAGS_FOLDER, REPO_ROOT, AirflowHome

HEAVY_MODULES = ("tensorflow", "keras", "pandas", "sklearn", "torch", "recpipe.pipeline", "recpipe.db",
                 "recpipe.ingest", "recpipe.models", "recpipe.alerts", "psycopg2")
MODELS = ("popularity", "ease", "itemknn", "autoint", "gru4rec", "twostage")  # the registry's, in order
# twostage is built from these models' runs of the night: it trains (and refits) after them.
NEEDS = {"twostage": ("autoint", "gru4rec", "ease", "popularity")}
NIGHTLY_TASKS = {"plan", "check_data", "rebuild_encodings", "rebuild_sessions", *(f"train_{m}" for m in MODELS),
                 "evaluate", "gate", "rebuild_refit_inputs", *(f"refit_{m}" for m in MODELS), "check_refits",
                 "prepare_publication", "score_shard", "publish", "learned_lists_shipped", "notify",
                 *(f"check_refits_for_{m}" for m in NEEDS)}
ACCELERATED = {"train_autoint", "train_gru4rec", "refit_autoint", "refit_gru4rec"}


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> AirflowHome:
    """One migrated AIRFLOW_HOME (sqlite metadata DB) for the whole session."""
    home = AirflowHome.create(tmp_path_factory.mktemp("airflow-home"))
    home.migrate()
    return home


def _python_in_home(home: AirflowHome, code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**home.env, **(env or {})}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )


DESCRIBE_DAGS = """
    import json, sys
    from pathlib import Path
    from airflow.dag_processing.dagbag import BundleDagBag

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path({dags!r})
    bag = BundleDagBag(folder, bundle_path=folder, bundle_name="dags-folder")
    out = {{"import_errors": {{str(k): v for k, v in bag.import_errors.items()}}, "dags": {{}}}}
    for dag_id, dag in bag.dags.items():
        out["dags"][dag_id] = {{
            "timetable": type(dag.timetable).__name__,
            "expression": getattr(getattr(dag.timetable, "timetable", dag.timetable), "expression", None),
            "timezone": str(getattr(getattr(dag.timetable, "timetable", dag.timetable), "timezone", "")),
            "time_part": type(getattr(dag.timetable, "timetable", dag.timetable)).__name__,
            "schedule_asset": getattr(getattr(dag.timetable, "asset_condition", None), "uri", None),
            "allowed_run_types": sorted(str(t.value) for t in dag.allowed_run_types or []),
            "start_date": dag.start_date.isoformat() if dag.start_date else None,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": {{k: dag.params.get_param(k).value for k in dag.params}},
            "param_schemas": {{k: dag.params.get_param(k).schema for k in dag.params}},
            "tasks": {{
                t.task_id: {{
                    "queue": t.queue,
                    "retries": t.retries,
                    "backoff": t.retry_exponential_backoff,
                    "on_failure": [getattr(c, "__name__", repr(c)) for c in (
                        t.on_failure_callback if isinstance(t.on_failure_callback, list)
                        else [t.on_failure_callback] if t.on_failure_callback else [])],
                    "outlets": [getattr(o, "uri", repr(o)) for o in t.outlets],
                    "upstream": sorted(t.upstream_task_ids),
                }}
                for t in dag.tasks
            }},
        }}
    print("JSON:" + json.dumps(out, default=str))
"""


def describe_dags(home: AirflowHome, env: dict | None = None) -> dict:
    proc = _python_in_home(home, DESCRIBE_DAGS.format(dags=str(DAGS_FOLDER)), env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("JSON:"))
    return json.loads(line[len("JSON:"):])


@pytest.fixture(scope="session")
def dag_info(airflow_home) -> dict:
    return describe_dags(airflow_home)


# ---------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------
def test_dags_import_without_errors(dag_info):
    assert dag_info["import_errors"] == {}
    assert set(dag_info["dags"]) == {"recpipe_ingest", "recpipe_nightly", "recpipe_deadline"}


def test_ingest_dag_has_real_daily_data_intervals(dag_info):
    dag = dag_info["dags"]["recpipe_ingest"]
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["expression"] == "0 0 * * *" and dag["timezone"] == "UTC"
    assert dag["start_date"].startswith("2000-04-25T00:00:00")
    assert dag["catchup"] is False
    (task,) = dag["tasks"].values()
    assert task["outlets"] == ["postgres://postgres:5432/recpipe/public/ratings"]  # compose's database
    assert task["retries"] >= 1 and task["backoff"] > 1
    assert task["on_failure"] == ["on_failure"]


def test_ingest_start_date_is_configurable(airflow_home):
    info = describe_dags(airflow_home, env={"RECPIPE_INGEST_START": "2000-06-01"})
    assert info["dags"]["recpipe_ingest"]["start_date"].startswith("2000-06-01T00:00:00")


def test_nightly_dag_shape(dag_info):
    dag = dag_info["dags"]["recpipe_nightly"]
    # Triggered by the ingest's ratings Asset; the midnight timetable (the ingest's intervals)
    # serves backfills and manual runs, never a scheduled run of its own.
    assert dag["timetable"] == "AssetOrTimeSchedule"
    assert dag["schedule_asset"] == "postgres://postgres:5432/recpipe/public/ratings"
    assert dag["time_part"] == "CronDataIntervalTimetable" and dag["expression"] == "0 0 * * *"
    assert dag["allowed_run_types"] == ["asset_triggered", "backfill", "manual", "operator_triggered"]
    assert dag["max_active_runs"] == 1
    tasks = dag["tasks"]
    assert set(tasks) == NIGHTLY_TASKS
    assert tasks["plan"]["upstream"] == []
    assert tasks["check_data"]["upstream"] == ["plan"]
    assert tasks["rebuild_encodings"]["upstream"] == ["check_data", "plan"]
    assert tasks["rebuild_sessions"]["upstream"] == ["check_data", "plan"]
    for model in MODELS:
        assert tasks[f"train_{model}"]["upstream"] == sorted(
            ["plan", "rebuild_encodings", "rebuild_sessions", *(f"train_{m}" for m in NEEDS.get(model, ()))])
    assert tasks["evaluate"]["upstream"] == sorted(["plan", *(f"train_{m}" for m in MODELS)])
    assert tasks["gate"]["upstream"] == ["evaluate", "plan"]
    assert tasks["rebuild_refit_inputs"]["upstream"] == ["gate", "plan"]
    for model in MODELS:  # a model built on others refits once their refits are checked
        checked = [f"check_refits_for_{model}"] if NEEDS.get(model) else []
        assert tasks[f"refit_{model}"]["upstream"] == sorted(
            ["plan", "rebuild_refit_inputs", f"train_{model}", *checked])
    for model, needs in NEEDS.items():
        assert tasks[f"check_refits_for_{model}"]["upstream"] == sorted(["plan", *(f"refit_{m}" for m in needs)])
    assert tasks["check_refits"]["upstream"] == sorted(["plan", *(f"refit_{m}" for m in MODELS)])
    assert tasks["prepare_publication"]["upstream"] == ["check_refits", "gate", "plan"]
    assert tasks["score_shard"]["upstream"] == ["plan", "prepare_publication"]
    assert tasks["publish"]["upstream"] == ["plan", "prepare_publication", "score_shard"]
    assert tasks["notify"]["upstream"] == ["publish"]
    assert tasks["learned_lists_shipped"]["upstream"] == ["gate", "publish"]
    for task_id, task in tasks.items():
        expected_queue = "gpu" if task_id in ACCELERATED else "default"
        assert task["queue"] == expected_queue, task_id
        assert task["retries"] >= (0 if task_id == "plan" else 1) and task["on_failure"] == ["on_failure"], task_id


def test_gpu_queue_is_a_setting(airflow_home):
    info = describe_dags(airflow_home, env={"RECPIPE_GPU_QUEUE": "cuda-a100"})
    tasks = info["dags"]["recpipe_nightly"]["tasks"]
    assert {t: v["queue"] for t, v in tasks.items() if v["queue"] != "default"} == {
        t: "cuda-a100" for t in ACCELERATED}


def test_nightly_params(dag_info):
    dag = dag_info["dags"]["recpipe_nightly"]
    assert dag["params"] == {
        "epochs": None, **{f"{m}_overrides": {} for m in MODELS},
        "gate_overrides": {}, "dry_run": False, "as_of": None, "scoring_shards": None,
        "refit": None, "warm_start_epochs": None,
    }
    assert dag["param_schemas"]["refit"]["enum"] == [None, "full", "warm_start"]
    assert dag["param_schemas"]["scoring_shards"]["maximum"] == 256
    schemas = dag["param_schemas"]
    assert schemas["epochs"]["type"] == ["null", "integer"]
    assert schemas["dry_run"]["type"] == "boolean"
    assert schemas["as_of"]["type"] == ["null", "string"] and schemas["as_of"]["format"] == "date-time"
    assert all(schemas[k]["type"] == "object" for k in (*(f"{m}_overrides" for m in MODELS), "gate_overrides"))


def test_dag_files_import_nothing_heavy(airflow_home):
    code = f"""
        import importlib.util, json, sys
        sys.path.insert(0, {str(DAGS_FOLDER)!r})
        import airflow.sdk  # the baseline: what Airflow itself imports
        before = set(sys.modules)
        for path in sorted(__import__("pathlib").Path({str(DAGS_FOLDER)!r}).glob("recpipe_*.py")):
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        print("JSON:" + json.dumps({{"all": sorted(sys.modules), "new": sorted(set(sys.modules) - before)}}))
    """
    proc = _python_in_home(airflow_home, code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    mods = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("JSON:"))[5:])
    heavy = [m for m in mods["all"] if m.split(".")[0] in {"tensorflow", "keras", "pandas", "sklearn", "torch"}
             or any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)]
    assert heavy == []
    assert not [m for m in mods["new"] if m.split(".")[0] in {"sqlalchemy", "numpy", "psycopg2"}]


# ---------------------------------------------------------------------------------------
# Alerts: Airflow notifiers (local SMTP server and Slack webhook endpoint)
# ---------------------------------------------------------------------------------------
class _SMTPHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        data, buf = False, []
        for line in self.rfile:
            if data:
                if line.rstrip(b"\r\n") == b".":
                    data = False
                    self.server.messages.append(b"".join(buf))
                    buf = []
                    self.wfile.write(b"250 queued\r\n")
                else:
                    buf.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 test\r\n")
            elif verb == b"DATA":
                data = True
                self.wfile.write(b"354 end with .\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


class _SlackHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def channels(monkeypatch):
    import airflow.sdk  # noqa: F401  notifications go out from Airflow processes, where it is loaded

    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    smtp.messages = []
    slack = HTTPServer(("127.0.0.1", 0), _SlackHandler)
    slack.posts = []
    for server in (smtp, slack):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        f"smtp://127.0.0.1:{smtp.server_address[1]}?disable_ssl=true&disable_tls=true&from_email=recpipe%40example.com",
    )
    monkeypatch.setenv("RECPIPE_ALERT_EMAIL", "ml-oncall@example.com")
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", json.dumps(
        {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{slack.server_address[1]}", "password": "T0/B0/XYZ"}))
    yield smtp, slack
    for server in (smtp, slack):
        server.shutdown()
        server.server_close()


def _alert(engine, **kw) -> dict:
    from recpipe import airflow_bridge, alerts

    alert_id = alerts.record_alert(engine, **kw)
    return alerts.fetch_alerts(engine, [alert_id])[0]


def test_notify_sends_through_configured_notifiers(engine, channels):
    from recpipe import airflow_bridge, alerts

    smtp, slack = channels
    row = _alert(engine, kind=alerts.METRIC_REGRESSION, model="gru4rec", metric="ndcg_at_10", value=0.01,
                 threshold=0.05, message="ndcg_at_10 0.01 below floor 0.05")
    sent = airflow_bridge.notify([row], engine=engine)
    assert sent == ["smtp", "slack"]
    (raw,) = smtp.messages
    msg = email.message_from_bytes(raw)
    assert msg["To"] == "ml-oncall@example.com" and msg["From"] == "recpipe@example.com"
    assert "metric_regression" in msg["Subject"]
    body = "".join(p.get_payload(decode=True).decode() for p in msg.walk() if p.get_content_type() == "text/html")
    assert "model=gru4rec" in body and "metric=ndcg_at_10" in body and "threshold=0.05" in body
    ((path, payload),) = slack.posts
    assert path == "/T0/B0/XYZ" and "value=0.01" in payload["text"]
    with engine.connect() as conn:
        notified = conn.execute(sa.text("SELECT notified FROM alerts WHERE alert_id = :i"),
                                {"i": row["alert_id"]}).scalar_one()
    assert sorted(notified) == ["slack", "smtp"]


def test_notify_without_connections_sends_nothing(engine, monkeypatch):
    from recpipe import airflow_bridge, alerts

    for var in ("AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECPIPE_SMTP_CONN_ID", "recpipe_no_such_smtp")
    monkeypatch.setenv("RECPIPE_SLACK_CONN_ID", "recpipe_no_such_slack")
    row = _alert(engine, kind=alerts.GATE_REJECTED, model="autoint", message="rejected")
    assert airflow_bridge.notify([row], engine=engine) == []
    assert alerts.fetch_alerts(engine, [row["alert_id"]])[0]["notified"] == []


def test_on_failure_callback_records_task_failed_alert(engine, settings, channels, monkeypatch):
    from types import SimpleNamespace

    from recpipe import airflow_bridge, alerts

    smtp, slack = channels
    monkeypatch.setenv("RECPIPE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECPIPE_HOME", str(settings.home))
    ti = SimpleNamespace(dag_id="recpipe_nightly", task_id="train_gru4rec", run_id="manual__2000-12-01", try_number=3)
    airflow_bridge.on_failure_callback({"ti": ti, "exception": RuntimeError("CUDA out of memory")})
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM alerts")).mappings().one()
    assert row["kind"] == "task_failed" and row["model"] == "gru4rec" and row["severity"] == "error"
    assert "run_id=manual__2000-12-01" in row["context"] and "task_id=train_gru4rec" in row["context"]
    assert "CUDA out of memory" in row["message"]
    assert sorted(row["notified"]) == ["slack", "smtp"] and len(smtp.messages) == 1 and len(slack.posts) == 1


def test_on_failure_callback_never_raises(monkeypatch, tmp_path):
    from recpipe import airflow_bridge, alerts

    monkeypatch.setenv("RECPIPE_DATABASE_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("RECPIPE_HOME", str(tmp_path))
    airflow_bridge.on_failure_callback({"ti": None, "exception": ValueError("x")})
    assert (tmp_path / alerts.PENDING_FILE).is_file()  # kept for when the database is back


# ---------------------------------------------------------------------------------------
# End to end: `airflow dags test` on small generated data
# ---------------------------------------------------------------------------------------
def _recpipe_env(settings) -> dict[str, str]:
    return {
        "RECPIPE_DATABASE_URL": settings.database_url,
        "RECPIPE_SOURCE_DIR": str(settings.source_dir),
        "RECPIPE_HOME": str(settings.home),
        "RECPIPE_TASK_RETRIES": "0",
    }


def _ratings(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT user_id, movie_id, rating, rated_at, source_line FROM ratings ORDER BY user_id, movie_id"))]


@pytest.fixture
def three_day_source(synthetic_dir, tmp_path) -> tuple[Path, "date"]:
    """The synthetic users/movies with only the ratings of the busiest three consecutive UTC
    days, plus one rating exactly at midnight between the first and second (an interval
    boundary). Returns (folder, first day)."""
    from collections import Counter
    from datetime import datetime, timedelta, timezone

    lines = (synthetic_dir / "ratings.dat").read_text(encoding="latin-1").splitlines(keepends=True)
    day = lambda ts: datetime.fromtimestamp(int(ts), timezone.utc).date()  # noqa: E731
    per_day = Counter(day(line.strip().split("::")[3]) for line in lines)
    first = max(per_day, key=lambda d: sum(per_day[d + timedelta(days=i)] for i in range(3)))
    lo = int(datetime(first.year, first.month, first.day, tzinfo=timezone.utc).timestamp())
    boundary, hi = lo + 86_400, lo + 3 * 86_400
    dest = tmp_path / "ml-3days"
    dest.mkdir()
    for name in ("users.dat", "movies.dat"):
        (dest / name).write_bytes((synthetic_dir / name).read_bytes())
    kept, pairs = [], set()
    for line in lines:
        user, movie, _, ts = line.strip().split("::")
        pairs.add((user, movie))
        if lo <= int(ts) < hi:
            kept.append(line)
    assert len(kept) >= 10, "the synthetic data should have ratings in three consecutive days"
    movie = next(m for m in range(1, 10_000) if ("1", str(m)) not in pairs)
    kept.insert(len(kept) // 2, f"1::{movie}::4::{boundary}\n")
    (dest / "ratings.dat").write_text("".join(kept), encoding="latin-1")
    return dest, first


def test_ingest_dag_intervals_and_rerun_equal_one_full_ingest(airflow_home, engine, settings, three_day_source):
    from datetime import timedelta

    from recpipe import pipeline

    source_dir, first = three_day_source
    settings = settings.with_(source_dir=source_dir)
    env = _recpipe_env(settings)
    # `dags test <date>` runs the data interval that ends at <date>: [date - 1 day, date).
    ends = [(first + timedelta(days=i)).isoformat() for i in (1, 2, 3, 2)]
    timings = {}
    for logical_date in ends:
        proc = airflow_home.airflow("dags", "test", "recpipe_ingest", logical_date, env=env)
        timings.setdefault(logical_date, []).append(round(proc.elapsed, 1))
    print("airflow dags test recpipe_ingest timings (s):", timings)
    with engine.connect() as conn:
        batches = conn.execute(sa.text(
            "SELECT interval_start, interval_end FROM ingest_batches ORDER BY batch_id")).all()
    assert [(b[0].date().isoformat(), b[1].date().isoformat()) for b in batches] == [
        ((first + timedelta(days=i - 1)).isoformat(), (first + timedelta(days=i)).isoformat()) for i in (1, 2, 3, 2)]
    by_dag = _ratings(engine)

    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches, users, movies RESTART IDENTITY CASCADE")
    pipeline.ingest_interval(settings, None, None)
    assert by_dag == _ratings(engine)
    assert len(by_dag) == sum(1 for _ in open(source_dir / "ratings.dat"))


def test_ingest_task_failure_records_an_alert(airflow_home, engine, settings, tmp_path):
    env = {**_recpipe_env(settings), "RECPIPE_SOURCE_DIR": str(tmp_path / "missing")}
    proc = airflow_home.airflow("dags", "test", "recpipe_ingest", "2000-05-11", env=env, check=False)
    assert proc.returncode != 0
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, context, message FROM alerts")).all()
    assert len(rows) == 1 and rows[0].kind == "task_failed"
    assert "dag_id=recpipe_ingest" in rows[0].context and "task_id=ingest" in rows[0].context


def test_a_failure_with_the_recpipe_database_down_still_reaches_the_notifiers(airflow_home, engine, settings,
                                                                             channels):
    """The alert goes out first; it is kept in RECPIPE_HOME and recorded once the database is back."""
    from recpipe import alerts

    smtp, slack = channels
    down = "postgresql+psycopg2://postgres@127.0.0.1:1/recpipe"  # nothing answers there, as with a stopped server
    env = {**_recpipe_env(settings), "RECPIPE_DATABASE_URL": down, **{k: os.environ[k] for k in (
        "AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", "RECPIPE_ALERT_EMAIL")}}
    proc = airflow_home.airflow("dags", "test", "recpipe_ingest", "2000-05-11", env=env, check=False)
    assert proc.returncode != 0
    (raw,) = smtp.messages
    message = email.message_from_bytes(raw)
    body = "".join(p.get_payload(decode=True).decode() for p in message.walk() if p.get_content_type() == "text/html")
    assert "task_failed" in message["Subject"] and "task_id=ingest" in body and len(slack.posts) == 1
    pending = settings.home / alerts.PENDING_FILE
    assert len(pending.read_text().splitlines()) == 1

    (alert_id,) = alerts.record_pending(engine, settings.home)  # the database is back
    (row,) = alerts.fetch_alerts(engine, [alert_id])
    assert row["kind"] == "task_failed" and "dag_id=recpipe_ingest" in row["context"]
    assert sorted(row["notified"]) == ["slack", "smtp"] and not pending.exists()


def test_publish_deadline_is_a_duration_with_units(airflow_home):
    from recpipe.config import Settings

    assert Settings.from_env({}).publish_deadline == timedelta(hours=6)
    assert Settings.from_env({"RECPIPE_PUBLISH_DEADLINE": "90min"}).publish_deadline == timedelta(minutes=90)
    for bad in ("6", "25h", "6 hours", "0h"):
        with pytest.raises(ValueError, match="RECPIPE_PUBLISH_DEADLINE"):
            Settings.from_env({"RECPIPE_PUBLISH_DEADLINE": bad})
    info = describe_dags(airflow_home, {"RECPIPE_PUBLISH_DEADLINE": "90min"})
    assert info["dags"]["recpipe_deadline"]["expression"] == "30 1 * * *"


def test_deadline_fires_once_for_a_night_without_lists(airflow_home, engine, settings, channels):
    """recpipe_deadline at 06:00 UTC: the night of 2000-12-01 published nothing -> one
    deadline_missed alert, sent; a rerun does not alert again; a night with lists is quiet."""
    smtp, slack = channels
    env = {**_recpipe_env(settings), **{k: os.environ[k] for k in (
        "AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", "RECPIPE_ALERT_EMAIL")}}
    for _ in range(2):
        proc = airflow_home.airflow("dags", "test", "recpipe_deadline", "2000-12-01T07:00:00+00:00", env=env,
                                    check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, context, message, notified FROM alerts")).all()
    assert [(r.kind, r.context) for r in rows] == [("deadline_missed", "night=2000-12-01")]
    assert "2000-12-01T06:00:00+00:00" in rows[0].message and sorted(rows[0].notified) == ["slack", "smtp"]
    (raw,) = smtp.messages
    assert "deadline_missed" in email.message_from_bytes(raw)["Subject"] and len(slack.posts) == 1

    import pandas as pd

    from recpipe.publish import publish_top_k

    with engine.begin() as conn:  # the next night published (before its deadline)
        run_id = conn.exec_driver_sql("INSERT INTO model_runs (model, as_of, status) VALUES"
                                      " ('popularity', '2000-12-02T02:00:00+00:00', 'promoted') RETURNING run_id").scalar()
    publish_top_k(engine, run_id, pd.DataFrame({"user_id": [1], "rank": [1], "movie_id": [1], "score": [1.0],
                                                "fallback": [False]}), retention=timedelta(days=30))
    proc = airflow_home.airflow("dags", "test", "recpipe_deadline", "2000-12-02T07:00:00+00:00", env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar_one() == 1
    assert len(smtp.messages) == 1


def _pipeline_has(*names: str) -> bool:
    from recpipe import pipeline

    return all(hasattr(pipeline, n) for n in names)


needs_pipeline = pytest.mark.skipif(
    not _pipeline_has("train_model", "evaluate", "gate", "publish", "notify"),
    reason="recpipe.pipeline does not have the training/evaluation/gate/publish stages yet",
)
NIGHTLY_DATE = "2000-12-01"  # data interval [2000-11-30, 2000-12-01): as_of = its end


def _nightly(airflow_home, settings, conf: dict):
    proc = airflow_home.airflow("dags", "test", "recpipe_nightly", NIGHTLY_DATE, "--conf", json.dumps(conf),
                                env=_recpipe_env(settings), check=False)
    return proc


@pytest.mark.slow
@needs_pipeline
def test_nightly_dags_test_promotes_and_publishes(airflow_home, engine, settings):
    from recpipe import pipeline

    pipeline.ingest_interval(settings, None, None)
    # This tests the Airflow layer, not model quality: one epoch on 120 synthetic users, and
    # the gate opened wide through the trigger params (which is part of what is tested).
    lenient = {"must_beat_baseline": False, "min_test_users": 1, "floors": {
        "autoint": {"auc": 0.0, "ndcg_at_10": 0.0, "recall_at_10": 0.0},
        "gru4rec": {"ndcg_at_10": 0.0, "recall_at_10": 0.0},
        "twostage": {"ndcg_at_10": 0.0, "recall_at_10": 0.0}}}
    proc = _nightly(airflow_home, settings, {"epochs": 1, "gate_overrides": lenient})
    print(f"airflow dags test recpipe_nightly: {proc.elapsed:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT model, status, as_of FROM model_runs ORDER BY run_id")).all()
        published = dict(conn.execute(sa.text("SELECT model, run_id FROM published_runs")).all())
        lists = conn.execute(sa.text("SELECT count(DISTINCT user_id) FROM recommendations_current")).scalar_one()
    trained = {r.model: r for r in runs if r.model in ("autoint", "gru4rec", "twostage")}
    assert set(trained) == {"autoint", "gru4rec", "twostage"}
    assert all(r.status == "promoted" for r in trained.values()), runs
    assert trained["autoint"].as_of.isoformat().startswith("2000-12-01T00:00:00")
    assert {"autoint", "gru4rec", "twostage"} <= set(published)
    assert lists > 0


@pytest.mark.slow
@needs_pipeline
def test_nightly_forced_regression_alerts_and_publishes_nothing(airflow_home, engine, settings, channels):
    """Every learned model rejected: nothing of theirs is published, the run is not all green
    (learned_lists_shipped is skipped with the reason) and the on-call gets one message."""
    from recpipe import pipeline
    from recpipe.main import last_dag_run

    smtp, slack = channels
    pipeline.ingest_interval(settings, None, None)
    impossible = {"floors": {m: {"ndcg_at_10": 2.0} for m in ("autoint", "gru4rec", "twostage")}}
    env = {**_recpipe_env(settings), **{k: os.environ[k] for k in (
        "AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", "RECPIPE_ALERT_EMAIL")}}
    proc = airflow_home.airflow("dags", "test", "recpipe_nightly", NIGHTLY_DATE, "--conf",
                                json.dumps({"epochs": 1, "gate_overrides": impossible}), env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    with engine.connect() as conn:
        alerts = conn.execute(sa.text("SELECT kind, model, metric, value, threshold, context, notified FROM alerts")).all()
        runs = dict(conn.execute(sa.text(
            "SELECT model, status FROM model_runs WHERE model IN ('autoint', 'gru4rec')")).all())
        published = conn.execute(sa.text("SELECT model FROM published_runs")).scalars().all()
    assert runs == {"autoint": "rejected", "gru4rec": "rejected"}
    per_model = [a for a in alerts if a.kind != "all_rejected"]
    assert {a.model for a in per_model} >= {"autoint", "gru4rec"}
    assert all(a.threshold is not None and a.value is not None and a.metric for a in per_model)
    assert [a.kind for a in alerts].count("all_rejected") == 1
    assert all(sorted(a.notified) == ["slack", "smtp"] for a in alerts)
    assert not (set(published) & {"autoint", "gru4rec"})
    state, tasks = last_dag_run(airflow_home.root / "airflow.db", "recpipe_nightly")
    states = {task: s for task, s, _ in tasks}
    assert states["learned_lists_shipped"] == "skipped" and states["publish"] == "success", states
    assert "no learned model was promoted tonight" in proc.stdout + proc.stderr
    (raw,) = smtp.messages  # one message for the whole night
    assert "all_rejected" in email.message_from_bytes(raw)["Subject"] and len(slack.posts) == 1


@pytest.mark.slow
@needs_pipeline
def test_nightly_dry_run_publishes_nothing(airflow_home, engine, settings):
    from recpipe import pipeline

    pipeline.ingest_interval(settings, None, None)
    proc = _nightly(airflow_home, settings, {"epochs": 1, "dry_run": True})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar_one() >= 2
        assert conn.execute(sa.text("SELECT count(*) FROM published_runs")).scalar_one() == 0


@pytest.mark.slow
@needs_pipeline
def test_notify_sends_the_gates_alerts_after_a_failed_publish(airflow_home, engine, settings, channels):
    """publish fails for real (the database refuses the switch); notify still runs and the
    gate's rejection reaches the on-call channels."""
    from recpipe import pipeline
    from recpipe.main import last_dag_run

    smtp, _ = channels
    pipeline.ingest_interval(settings, None, None)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION recpipe_test_refuse() RETURNS trigger LANGUAGE plpgsql AS"
                             " $$ BEGIN RAISE EXCEPTION 'no space left on device (test)'; END $$")
        conn.exec_driver_sql("CREATE TRIGGER recpipe_test_refuse BEFORE INSERT OR UPDATE ON published_runs"
                             " FOR EACH STATEMENT EXECUTE FUNCTION recpipe_test_refuse()")
    try:
        env = {**_recpipe_env(settings), **{k: os.environ[k] for k in (
            "AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", "RECPIPE_ALERT_EMAIL")}}
        conf = {"epochs": 1, "gate_overrides": {"floors": {"gru4rec": {"ndcg_at_10": 2.0}}}}
        proc = airflow_home.airflow("dags", "test", "recpipe_nightly", NIGHTLY_DATE, "--conf", json.dumps(conf),
                                    env=env, check=False)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER recpipe_test_refuse ON published_runs")
            conn.exec_driver_sql("DROP FUNCTION recpipe_test_refuse()")
    state, tasks = last_dag_run(airflow_home.root / "airflow.db", "recpipe_nightly")
    states = {task: s for task, s, _ in tasks}
    assert state == "failed" and states["publish"] == "failed" and states["notify"] == "success", (
        states, proc.stdout[-3000:])
    with engine.connect() as conn:
        rejected = conn.execute(sa.text(
            "SELECT notified FROM alerts WHERE kind = 'gate_rejected' AND model = 'gru4rec'")).scalars().all()
    assert rejected and all("smtp" in n for n in rejected)
    subjects = [email.message_from_bytes(raw)["Subject"] for raw in smtp.messages]
    assert any("gate_rejected" in s for s in subjects), subjects


def test_a_task_without_its_database_fails_instead_of_using_a_throwaway_one(airflow_home, settings, tmp_path):
    """No RECPIPE_DATABASE_URL and no `recpipe_db` connection: the task ends failed, and no
    embedded PostgreSQL is started behind the operator's back."""
    home = tmp_path / "home"
    env = {"RECPIPE_SOURCE_DIR": str(settings.source_dir), "RECPIPE_HOME": str(home), "RECPIPE_TASK_RETRIES": "0",
           # the Asset other runs of this Airflow home registered (its URI names their database)
           "RECPIPE_RATINGS_ASSET_URI": f"postgres://127.0.0.1:5432/{settings.database_url.rsplit('/', 1)[1]}/public/ratings"}
    proc = airflow_home.airflow("dags", "test", "recpipe_ingest", "2000-05-11", env=env, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "recpipe_db" in output
    assert not (home / "pgdata").exists()


@pytest.mark.parametrize("conf", [{"gate_overrides": {"tolerence": 0.2}}, {"autoint_overrides": {"embed_dimm": 4}},
                                  {"as_of": "yesterday"}])
def test_bad_trigger_parameters_fail_at_once_without_training(airflow_home, engine, settings, conf):
    """Refused by the params' JSON schema or by the plan task (no retries), never after training."""
    env = {**_recpipe_env(settings), "RECPIPE_TASK_RETRIES": "2"}
    proc = airflow_home.airflow("dags", "test", "recpipe_nightly", NIGHTLY_DATE, "--conf", json.dumps(conf),
                                env=env, check=False)
    output = proc.stdout + proc.stderr
    print(f"refused in {proc.elapsed:.0f}s")
    assert proc.returncode != 0 or "failed" in output.lower()
    if "gate_overrides" not in conf:  # the others pass the form and are refused by the plan task
        assert "invalid night parameters" in output, output[-3000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar_one() == 0
