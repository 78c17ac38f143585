"""The data-quality gate (issue #13 item 3): rules, and real nights stopped before training."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from recpipe import pipeline
from recpipe.config import Settings
from recpipe.gate import DataGateError, DataRules, GateRuleError, GateRules, judge_data
from recpipe.ingest import ingest
from recpipe.plan import NightPlan, PlanError

UTC = timezone.utc
NIGHT_A = datetime(2000, 12, 1, tzinfo=UTC)  # a clean night, published
DAY = timedelta(days=1)
NO_NEW = NIGHT_A + DAY  # nothing ingested in [A, A + 1 day)
BAD = NIGHT_A + 2 * DAY  # its day's batch holds many quarantined lines
BAD_LINES = 12  # rating 9: rating_out_of_range, rated within BAD's last day
LOOSE = {"data": {"max_rejected_share": 0.9}}


# ---------------------------------------------------------------------------------------
# Rules: parsing and validation
# ---------------------------------------------------------------------------------------
def test_rules_file_has_the_data_section():
    rules = GateRules.load()
    assert rules.data == DataRules(max_rejected_share=0.05, min_new_ratings=1, max_vanished_user_share=0.01,
                                   max_vanished_movie_share=0.01)


def test_data_override_is_merged_per_key_and_survives_the_plan(tmp_path):
    rules = GateRules.load({"data": {"min_new_ratings": 50}})
    assert rules.data.min_new_ratings == 50 and rules.data.max_rejected_share == 0.05
    plan = NightPlan.build(NIGHT_A, gate_overrides={"data": {"max_vanished_user_share": 0.2}})
    again = NightPlan.from_json(plan.to_json())
    assert GateRules(**again.gate_rules).data.max_vanished_user_share == 0.2
    assert GateRules(**again.gate_rules).data.max_vanished_movie_share == 0.01


@pytest.mark.parametrize("overrides, message", [
    ({"data": {"max_rejected": 0.1}}, "unknown gate setting 'data.max_rejected'"),
    ({"data": {"max_rejected_share": 1.5}}, "data.max_rejected_share' must be within"),
    ({"data": {"max_rejected_share": "5%"}}, "data.max_rejected_share' must be a number"),
    ({"data": {"max_vanished_movie_share": -0.1}}, "data.max_vanished_movie_share' must be within"),
    ({"data": {"min_new_ratings": 0.5}}, "data.min_new_ratings' must be an integer"),
    ({"data": {"min_new_ratings": True}}, "data.min_new_ratings' must be an integer"),
    ({"data": {"min_new_ratings": -1}}, "data.min_new_ratings' must be an integer"),
    ({"data": [0.1]}, "'data' must be an object"),
])
def test_bad_data_rules_are_refused_before_anything_runs(overrides, message):
    with pytest.raises(GateRuleError, match=message):
        GateRules.load(overrides)
    with pytest.raises(PlanError, match=message):
        NightPlan.build(NIGHT_A, gate_overrides=overrides)


def test_a_bad_data_section_in_the_rules_file_is_refused(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("tolerance: 0.1\ndata:\n  min_new_rating: 3\n")
    with pytest.raises(GateRuleError, match="unknown gate setting 'data.min_new_rating'"):
        GateRules.load(path=path)


def _figures(**changes) -> dict:
    base = {"since": "2000-11-30T00:00:00+00:00", "previous_night": "2000-11-30T00:00:00+00:00", "lines_read": 100,
            "rejected": 5, "rejected_share": 0.05, "new_ratings": 1, "previous_users": 100, "vanished_users": 1,
            "vanished_user_share": 0.01, "previous_movies": 200, "vanished_movies": 2, "vanished_movie_share": 0.01}
    return {**base, **changes}


def test_judge_data_fires_only_past_each_limit():
    rules = DataRules()
    assert judge_data(_figures(), rules) == []  # every figure exactly at its limit
    fired = judge_data(_figures(rejected=6, rejected_share=0.06, new_ratings=0, vanished_users=2,
                                vanished_user_share=0.02, vanished_movies=3, vanished_movie_share=0.015), rules)
    assert [f["rule"] for f in fired] == ["max_rejected_share", "min_new_ratings", "max_vanished_user_share",
                                          "max_vanished_movie_share"]
    assert fired[0]["metric"] == "rejected_share" and fired[0]["value"] == 0.06 and fired[0]["threshold"] == 0.05
    assert "6 of the 100 ratings lines" in fired[0]["message"]
    assert "2 of the 100 users" in fired[2]["message"]
    # No previous night: nothing to compare, the vanished rules cannot fire.
    assert judge_data(_figures(vanished_user_share=None, vanished_movie_share=None), rules) == []
    assert judge_data(_figures(new_ratings=0), DataRules(min_new_ratings=0)) == []


# ---------------------------------------------------------------------------------------
# Real nights on PostgreSQL
# ---------------------------------------------------------------------------------------
def recpipe(*args, settings: Settings):
    env = {**os.environ, "RECPIPE_DATABASE_URL": settings.database_url, "RECPIPE_HOME": str(settings.home),
           "RECPIPE_SOURCE_DIR": str(settings.source_dir)}
    return subprocess.run([sys.executable, "-m", "recpipe.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def scalar(engine, sql, params=None):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params or {}).scalar()


def published(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT p.model, p.run_id, r.as_of FROM published_runs p JOIN model_runs r USING (run_id)"
            " ORDER BY p.model"))]


def baseline_night(settings, night, **choices) -> dict:
    """A real night that trains the popularity baseline only (cheap), publishing its lists."""
    return pipeline.run_nightly(settings, pipeline.make_plan(settings, night, models=("popularity",), **choices))


@pytest.fixture(scope="module")
def nights(migrated_engine, database_url, synthetic_dir, tmp_path_factory):
    """Night A ran and published on clean data; then BAD's last day was ingested with
    BAD_LINES quarantined lines; nothing was ingested for [A, A + 1 day)."""
    engine = migrated_engine
    from conftest import DATA_TABLES

    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    source = tmp_path_factory.mktemp("source")
    for path in synthetic_dir.iterdir():
        shutil.copy(path, source / path.name)
    rated = int((BAD - timedelta(hours=5)).timestamp())
    with open(source / "ratings.dat", "a", encoding="ascii", newline="\n") as fh:
        fh.writelines(f"{u}::1::9::{rated}\n" for u in range(1, BAD_LINES + 1))
    settings = Settings(database_url=database_url, home=tmp_path_factory.mktemp("home"), source_dir=source)
    ingest(engine, source, None, NIGHT_A)
    first = baseline_night(settings, NIGHT_A)
    assert first["data_check"]["passed"] and first["data_check"]["figures"]["previous_night"] is None
    bad_day = ingest(engine, source, BAD - DAY, BAD)
    assert bad_day.rejected == BAD_LINES and bad_day.inserted >= 1
    return settings, engine, bad_day


def _stopped_night(settings, engine, night, rule):
    before = published(engine)
    alerts_before = scalar(engine, "SELECT coalesce(max(alert_id), 0) FROM alerts")
    done = recpipe("run", "--as-of", night.date().isoformat(), "--epochs", "1", settings=settings)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recpipe run: the data gate stopped the night") and rule in last, done.stderr[-3000:]
    with engine.connect() as conn:
        alerts = conn.execute(sa.text("SELECT alert_id, kind, metric, value, threshold, message FROM alerts"
                                      " WHERE alert_id > :n ORDER BY alert_id"), {"n": alerts_before}).all()
        check = conn.execute(sa.text("SELECT decision, fired, alert_ids, figures FROM data_checks"
                                     " WHERE night = :t ORDER BY check_id DESC LIMIT 1"), {"t": night}).one()
    assert [a.kind for a in alerts] == ["data_gate"] and rule in alerts[0].message
    assert check.decision == "stopped" and [f["rule"] for f in check.fired] == [rule]
    assert check.alert_ids == [alerts[0].alert_id]
    # No training, no new lists.
    assert scalar(engine, "SELECT count(*) FROM model_runs WHERE as_of = :t", {"t": night}) == 0
    assert published(engine) == before and before
    return alerts[0], check.figures


def test_a_night_without_new_ratings_is_stopped(nights):
    settings, engine, _ = nights
    alert, figures = _stopped_night(settings, engine, NO_NEW, "min_new_ratings")
    assert figures["new_ratings"] == 0 and figures["since"] == NIGHT_A.isoformat()
    assert alert.metric == "new_ratings" and alert.value == 0 and alert.threshold == 1


def test_a_night_with_too_many_rejected_lines_is_stopped(nights):
    settings, engine, bad_day = nights
    alert, figures = _stopped_night(settings, engine, BAD, "max_rejected_share")
    assert figures["batch_ids"] == [bad_day.batch_id] and figures["rejected"] == BAD_LINES
    assert figures["rejected_share"] == pytest.approx(BAD_LINES / bad_day.lines_read) and BAD_LINES / bad_day.lines_read > 0.05
    assert figures["new_ratings"] == bad_day.inserted  # every rating since night A is that day's
    assert figures["vanished_users"] == 0 and figures["previous_users"] > 0
    assert alert.metric == "rejected_share" and alert.threshold == 0.05


def test_check_data_command_and_a_gate_override_that_loosens_the_rule(nights):
    settings, engine, _ = nights
    alerts_before = scalar(engine, "SELECT count(*) FROM alerts")
    strict = recpipe("check-data", "--as-of", BAD.date().isoformat(), settings=settings)
    assert strict.returncode == 1 and "max_rejected_share" in strict.stderr, strict.stderr[-2000:]
    loose = recpipe("check-data", "--as-of", BAD.date().isoformat(), "--gate", json.dumps(LOOSE), "--json",
                    settings=settings)
    assert loose.returncode == 0, loose.stderr[-2000:]
    result = json.loads(loose.stdout)
    assert result["passed"] and result["figures"]["rejected"] == BAD_LINES
    # A hand-run check is recorded as a dry run: it never alerts.
    assert scalar(engine, "SELECT count(*) FROM alerts") == alerts_before
    assert scalar(engine, "SELECT bool_and(dry_run) FROM data_checks WHERE check_id >= :i",
                  {"i": result["check_id"] - 1}) is True
    typo = recpipe("check-data", "--as-of", BAD.date().isoformat(), "--gate", '{"data": {"max_rejected": 1}}',
                   settings=settings)
    assert typo.returncode == 2 and "data.max_rejected" in typo.stderr


def test_a_passing_night_goes_on_and_publishes(nights):
    settings, engine, _ = nights
    result = baseline_night(settings, BAD, gate_overrides=LOOSE)
    check = result["data_check"]
    assert check["passed"] and check["figures"]["previous_night"] == NIGHT_A.isoformat()
    assert check["figures"]["vanished_users"] == 0 and check["figures"]["previous_users"] > 0
    assert "check_data" in result["timings_s"]
    with engine.connect() as conn:  # analysts read the checks
        conn.exec_driver_sql("SET ROLE recpipe_reader")
        decisions = conn.exec_driver_sql("SELECT decision, count(*) FROM data_checks WHERE NOT dry_run"
                                         " GROUP BY decision ORDER BY decision").all()
        conn.rollback()
    assert [tuple(d) for d in decisions] == [("passed", 2), ("stopped", 2)]
    assert [(m, t) for m, _, t in published(engine)] == [("popularity", BAD)]


def test_vanished_users_stop_the_next_night(nights):
    """Ratings lost since the previous gated night (here: deleted) stop the night."""
    settings, engine, _ = nights
    if not scalar(engine, "SELECT count(*) FROM model_runs WHERE as_of = :t", {"t": BAD}):
        baseline_night(settings, BAD, gate_overrides=LOOSE)  # the previous gated night (when run alone)
    users = scalar(engine, "SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < :t", {"t": BAD})
    gone = users // 10
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM ratings WHERE user_id IN (SELECT DISTINCT user_id FROM ratings"
                             " ORDER BY user_id LIMIT :n)"), {"n": gone})
    plan = pipeline.make_plan(settings, BAD + DAY, models=("popularity",))
    with pytest.raises(DataGateError, match="max_vanished_user_share") as stopped:
        pipeline.check_data(settings, plan)
    fired = scalar(engine, "SELECT fired FROM data_checks WHERE check_id = :i", {"i": stopped.value.check_id})
    user_rule = next(f for f in fired if f["rule"] == "max_vanished_user_share")
    assert user_rule["value"] == pytest.approx(gone / users)
    assert len(stopped.value.alert_ids) == len(fired)


# ---------------------------------------------------------------------------------------
# Airflow: `airflow dags test recpipe_nightly`, the night stopped at check_data
# ---------------------------------------------------------------------------------------
from test_dags import NIGHTLY_DATE, _recpipe_env, airflow_home, channels  # noqa: E402,F401  (fixtures)


def test_nightly_dag_stops_at_check_data_and_notify_sends_the_alert(airflow_home, engine, settings, channels,
                                                                     tmp_path):
    from recpipe.main import last_dag_run

    smtp, _ = channels
    source = tmp_path / "source"
    shutil.copytree(settings.source_dir, source)
    lines = sum(1 for _ in open(source / "ratings.dat"))
    night = datetime.fromisoformat(NIGHTLY_DATE).replace(tzinfo=UTC) - DAY  # what the DAG's data interval gives
    rated = int((night - timedelta(hours=3)).timestamp())
    with open(source / "ratings.dat", "a", encoding="ascii", newline="\n") as fh:
        fh.writelines(f"{u}::1::0::{rated}\n" for u in range(1, lines // 10))  # ~10 % quarantined
    settings = settings.with_(source_dir=source)
    ingest(engine, source)
    env = {**_recpipe_env(settings), **{k: os.environ[k] for k in (
        "AIRFLOW_CONN_SMTP_DEFAULT", "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT", "RECPIPE_ALERT_EMAIL")},
        "RECPIPE_TASK_RETRIES": "2"}  # check_data must not retry all the same
    proc = airflow_home.airflow("dags", "test", "recpipe_nightly", NIGHTLY_DATE, "--conf", json.dumps({"epochs": 1}),
                                env=env, check=False)
    print(f"airflow dags test recpipe_nightly (stopped at check_data): {proc.elapsed:.1f}s")
    state, tasks = last_dag_run(airflow_home.root / "airflow.db", "recpipe_nightly")
    states = {task: s for task, s, _ in tasks}
    output = proc.stdout + proc.stderr
    assert state == "failed" and states["check_data"] == "failed", (states, output[-4000:])
    assert states["notify"] == "success" and states.get("publish") != "success", states
    assert not any(s == "success" for t, s in states.items() if t.startswith(("train_", "rebuild_"))), states
    assert "the data gate stopped the night" in output and "max_rejected_share" in output
    with engine.connect() as conn:
        alert = conn.execute(sa.text("SELECT metric, threshold, notified, context FROM alerts"
                                     " WHERE kind = 'data_gate'")).one()
        tries = conn.execute(sa.text("SELECT count(*) FROM data_checks")).scalar_one()
        runs = conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar_one()
    assert alert.metric == "rejected_share" and alert.threshold == 0.05 and "smtp" in alert.notified
    assert "dag_id=recpipe_nightly" in alert.context
    assert tries == 1 and runs == 0  # no retry, nothing trained
    subjects = [__import__("email").message_from_bytes(raw)["Subject"] for raw in smtp.messages]
    assert any("data_gate" in s for s in subjects), subjects
