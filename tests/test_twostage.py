"""Two-stage lists (recpipe/recommenders/twostage.py) on generated data and a real
PostgreSQL: candidates from the night's GRU4Rec, EASE and popularity runs, order from
its AutoInt+ run, N chosen on validation, published by the nightly."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recpipe import pipeline, registry, runs
from recpipe.artifacts import ArtifactIntegrityError
from recpipe.plan import NightPlan, PlanError
from recpipe.recommenders.autoint import score_catalogue
from recpipe.recommenders.base import History, Store
from recpipe.recommenders.twostage import FUSION_K, SOURCES, candidates, ranker_scores
from recpipe.scoring import LoadedRun

UTC = timezone.utc
NIGHT = datetime(2000, 12, 1, tzinfo=UTC)
NIGHTLY = datetime(2000, 12, 15, tzinfo=UTC)  # another night: the nightly must not replace NIGHT's runs
SIZES = [10, 20, 40]  # the catalogue has 90 movies: candidates stay a strict subset of it
SMALL = {
    "autoint": {"batch_size": 64, "learning_rate": 0.01, "embed_dim": 8, "dnn_units": [16]},
    "gru4rec": {"batch_size": 16, "hidden": 16, "embedding_dim": 16, "learning_rate": 0.01},
    "twostage": {"candidate_sizes": SIZES},
}
FAST = {  # tests/test_publish.py's small-data settings
    "autoint": {"batch_size": 64, "learning_rate": 0.01, "epochs": 8, "patience": 3, "embed_dim": 8,
                "dnn_units": [16]},
    "gru4rec": {"batch_size": 16, "hidden": 32, "embedding_dim": 32, "epochs": 8, "learning_rate": 0.01},
    "twostage": {"candidate_sizes": SIZES},
}


@pytest.fixture(scope="module")
def night(ingested):
    """Every model twostage needs, then twostage, trained for one night."""
    settings, engine = ingested
    plan = pipeline.make_plan(settings, NIGHT, epochs=2, models=registry.with_needs(["twostage"]),
                              model_overrides=SMALL)
    inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan),
                                   pipeline.rebuild_sessions(settings, plan))
    trained: dict[str, dict] = {}
    for model in registry.training_order(plan.models):
        needed = [trained[m] for m in registry.spec(model).needs]
        trained[model] = pipeline.train_model(settings, plan, model,
                                              inputs.with_components({t["model"]: t["run_id"] for t in needed}))
    store = Store(engine, settings)
    history = History.load(store, NIGHT)
    return settings, engine, plan, {m: t["run_id"] for m, t in trained.items()}, store, history


def test_training_order_puts_twostage_after_what_it_needs():
    order = registry.training_order()
    for needed in registry.spec("twostage").needs:
        assert order.index(needed) < order.index("twostage")
    with pytest.raises(ValueError, match="needs the night's autoint"):
        registry.training_order(["popularity", "ease", "gru4rec", "twostage"])
    with pytest.raises(PlanError, match="twostage needs"):
        NightPlan.build(NIGHT, models=("popularity", "twostage"))


def test_training_order_refuses_a_cycle(monkeypatch):
    cyclic = {**registry.MODELS,
              "a": registry.ModelSpec("a", "x", needs=("b",)), "b": registry.ModelSpec("b", "x", needs=("a",))}
    monkeypatch.setattr(registry, "MODELS", cyclic)
    with pytest.raises(ValueError, match="cycle"):
        registry.training_order(["a", "b"])


def test_the_run_records_its_components_and_the_chosen_n(night):
    settings, engine, plan, trained, _, _ = night
    run = runs.get(engine, trained["twostage"])
    stats = run.data_stats
    assert {m: c["run_id"] for m, c in stats["components"].items()} == {
        m: trained[m] for m in ("autoint", "gru4rec", "ease", "popularity")}
    assert run.plan["inputs"]["component_runs"] == {m: c["run_id"] for m, c in stats["components"].items()}
    # N is chosen on the validation window before the training cutoff, never on the test window.
    assert stats["train_until"] == plan.training_cutoff.isoformat()
    assert stats["validation_from"] == (plan.training_cutoff - timedelta(days=30)).isoformat()
    assert stats["validation_users"] > 0
    # Every N with every combination of source weights was tried; the log keeps, per N,
    # AutoInt+'s own order (weights 0) and the best fusion.
    assert stats["combinations_tried"] == len(SIZES) * 4 ** len(SOURCES)
    log = stats["choice_log"]
    assert sorted({row["n"] for row in log}) == SIZES
    plain = [row for row in log if not any(row["weights"].values())]
    assert [row["n"] for row in plain] == SIZES
    best = max(log, key=lambda row: (row["ndcg_at_10"], -row["n"], -sum(row["weights"].values())))
    assert (stats["n"], stats["weights"]) == (best["n"], best["weights"]) and stats["n"] in SIZES
    # More candidates per source can only add candidates.
    per_user = [row["candidates_per_user"] for row in plain]
    assert per_user == sorted(per_user) and per_user[0] < per_user[-1]
    with run.open_artifact(settings) as bundle:
        stored = json.loads(bundle.read_text("twostage.json"))
    assert (stored["n"], stored["weights"]) == (stats["n"], stats["weights"])
    assert run.metrics["training"]["seconds"] >= 0


def test_candidates_are_the_union_of_the_components_top_n_minus_seen(night):
    settings, engine, _, trained, store, history = night
    model = LoadedRun(store, runs.get(engine, trained["twostage"])).model
    users = history.users[::3]
    pool = candidates(model.sources, history, users, model.n)
    expected = set()
    for source in SOURCES:  # each component's own lists, loaded from its run
        lists = LoadedRun(store, runs.get(engine, trained[source])).lists(history, users, model.n)
        assert lists.groupby("user_id").size().max() <= model.n
        expected |= set(zip(lists["user_id"].tolist(), lists["movie_id"].tolist()))
    expected = {(u, m) for u, m in expected if m not in history.seen.get(u, set())}
    got = set(zip(pool["user_id"].tolist(), pool["movie_id"].tolist()))
    assert got == expected
    assert len(pool) == len(got), "a candidate appears once per user"
    assert not any(m in history.seen.get(u, ()) for u, m in got)
    catalogue = len(store.movies())
    assert pool.groupby("user_id").size().max() < catalogue - 30, "candidates are a subset of the catalogue"


def test_with_source_weights_0_the_list_is_autoints_order_over_the_candidates(night):
    settings, engine, _, trained, store, history = night
    loaded = LoadedRun(store, runs.get(engine, trained["twostage"]))
    loaded.model.weights = dict.fromkeys(SOURCES, 0.0)
    users = history.users[::3]
    lists = loaded.lists(history, users, 10)
    pool = candidates(loaded.model.sources, history, users, loaded.model.n)
    # AutoInt+'s full-catalogue ranking (its own scoring path), kept to each user's candidates.
    ranker = LoadedRun(store, runs.get(engine, trained["autoint"])).model
    full = score_catalogue(ranker.network, ranker.encoders, store.users()[store.users()["user_id"].isin(users)], store.movies(),
                           history.seen, history.as_of, k=len(store.movies()))
    kept = full.merge(pool[["user_id", "movie_id"]], on=["user_id", "movie_id"])
    kept = kept.sort_values(["user_id", "rank"])
    expected = kept.groupby("user_id")["movie_id"].apply(lambda m: m.tolist()[:10])
    got = lists.sort_values(["user_id", "rank"]).groupby("user_id")["movie_id"].agg(list)
    assert len(got) == len(users)
    assert (lists.groupby("user_id").size() == 10).all()
    assert got.to_dict() == expected.to_dict()
    scores = lists.sort_values(["user_id", "rank"]).groupby("user_id")["score"].agg(list)
    assert all(s == sorted(s, reverse=True) for s in scores)
    both = lists.merge(full, on=["user_id", "movie_id"], suffixes=("", "_full"))
    assert len(both) == len(lists) and np.allclose(both["score"], both["score_full"], atol=1e-5)


def test_with_source_weights_the_list_is_the_reciprocal_rank_fusion(night):
    settings, engine, _, trained, store, history = night
    loaded = LoadedRun(store, runs.get(engine, trained["twostage"]))
    weights = {"gru4rec": 0.5, "ease": 2.0, "popularity": 0.0}
    loaded.model.weights = weights
    users = history.users[::3]
    lists = loaded.lists(history, users, 10)
    pool = candidates(loaded.model.sources, history, users, loaded.model.n)
    pool["autoint"] = ranker_scores(loaded.model.ranker, store, history, pool)
    expected = {}
    for user, rows in pool.groupby("user_id"):  # the fusion, written out per user
        order = rows.sort_values(["autoint", "movie_id"], ascending=[False, True])["movie_id"].tolist()
        fused = {}
        for row in rows.itertuples():
            fused[row.movie_id] = 1 / (FUSION_K + order.index(row.movie_id) + 1) + sum(
                w / (FUSION_K + getattr(row, f"rank_{m}")) for m, w in weights.items()
                if w and not np.isnan(getattr(row, f"rank_{m}")))
        autoint = dict(zip(rows["movie_id"], rows["autoint"]))
        expected[user] = sorted(fused, key=lambda m: (-fused[m], -autoint[m], m))[:10]
    got = lists.sort_values(["user_id", "rank"]).groupby("user_id")["movie_id"].agg(list)
    assert got.to_dict() == expected
    plain = LoadedRun(store, runs.get(engine, trained["twostage"]))
    plain.model.weights = dict.fromkeys(SOURCES, 0.0)
    same = lists.merge(plain.lists(history, users, 10), on=["user_id", "rank", "movie_id"])
    assert len(same) < len(lists), "the weights change some list"


def test_a_component_replaced_since_is_refused(night):
    settings, engine, _, trained, store, _ = night
    with engine.begin() as conn:
        sha = conn.execute(sa.text("SELECT artifact_sha256 FROM model_runs WHERE run_id = :r"),
                           {"r": trained["ease"]}).scalar_one()
        conn.execute(sa.text("UPDATE model_runs SET artifact_sha256 = :s WHERE run_id = :r"),
                     {"s": "0" * 64, "r": trained["ease"]})
    try:
        with pytest.raises(ArtifactIntegrityError, match="ease component"):
            LoadedRun(store, runs.get(engine, trained["twostage"]))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE model_runs SET artifact_sha256 = :s WHERE run_id = :r"),
                         {"s": sha, "r": trained["ease"]})
    LoadedRun(store, runs.get(engine, trained["twostage"]))


def test_twostage_refuses_bad_candidate_sizes():
    recommender = registry.recommender("twostage")
    for bad in ([], [5], [20, "50"], 50):
        with pytest.raises(ValueError, match="candidate_sizes"):
            recommender.make_config({"candidate_sizes": bad}, None)
    assert recommender.make_config(None, 3)["candidate_sizes"] == [20, 50, 100]  # epochs do not apply
    for bad in ([], [-1.0], ["1"], [True], 1.0):
        with pytest.raises(ValueError, match="source_weights"):
            recommender.make_config({"source_weights": bad}, None)


def test_the_nightly_publishes_twostage_lists(night):
    settings, engine, _, _, _, _ = night
    gate = {"min_test_users": 5, "must_beat_baseline": False, "floors": {"autoint": {"auc": 0.0}}}
    plan = pipeline.make_plan(settings, NIGHTLY, model_overrides=FAST, gate_overrides=gate)
    result = pipeline.run_nightly(settings, plan)
    assert "train_twostage" in result["timings_s"]
    with engine.connect() as conn:
        night_runs = conn.execute(sa.text(
            "SELECT run_id, model, phase, status, gated_run_id, plan FROM model_runs WHERE as_of = :t"
            " AND NOT dry_run"), {"t": NIGHTLY}).mappings().all()
        lists = pd.read_sql(sa.text("SELECT user_id, rank, movie_id, run_id, fallback FROM recommendations_current"
                                    " WHERE model = 'twostage'"), conn)
        known = conn.execute(sa.text("SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < :t"),
                             {"t": NIGHTLY}).scalar_one()
    by = {(r["model"], r["phase"]): r for r in night_runs}
    gated = by[("twostage", "gated")]
    assert gated["status"] == "promoted"
    # The gated run is built from the night's gated component runs, the refit from their refits.
    assert gated["plan"]["inputs"]["component_runs"] == {m: by[(m, "gated")]["run_id"]
                                                         for m in registry.spec("twostage").needs}
    refit = by[("twostage", "refit")]
    assert refit["gated_run_id"] == gated["run_id"]
    # The refit is built from the component refits that passed their checks, else their gated runs;
    # each component was decided before the twostage refit was trained.
    assert refit["plan"]["inputs"]["component_runs"] == {
        m: by[(m, "refit")]["run_id"] if by[(m, "refit")]["status"] == "promoted" else by[(m, "gated")]["run_id"]
        for m in registry.spec("twostage").needs}
    assert "check_refits_for_twostage" in result["timings_s"]
    with engine.connect() as conn:
        order = conn.execute(sa.text(
            "SELECT bool_and(c.decided_at < t.created_at) FROM model_runs t JOIN model_runs c"
            " ON c.run_id = ANY(SELECT (jsonb_each_text(t.plan->'inputs'->'component_runs')).value::bigint)"
            " WHERE t.run_id = :r"), {"r": refit["run_id"]}).scalar_one()
    assert order, "every component run was decided before the twostage refit trained on it"
    assert lists["user_id"].nunique() == known and len(lists) == 10 * known
    assert set(lists["run_id"]) == {refit["run_id"] if refit["status"] == "promoted" else gated["run_id"]}
    assert not lists["fallback"].any(), "twostage serves every known user itself"


def test_a_twostage_refit_uses_only_component_refits_that_passed_their_checks(night):
    """A component refit that failed its checks, or was never checked, is not built upon:
    the twostage refit takes that component's gated run instead."""
    settings, engine, plan, trained, _, _ = night
    needs = registry.spec("twostage").needs
    with engine.begin() as conn:  # the gate promoted the night's runs
        for model in (*needs, "twostage"):
            runs.decide(conn, trained[model], runs.PROMOTED, [])
    refit_inputs = pipeline.rebuild_refit_inputs(settings, plan)
    refits = {m: pipeline.refit_model(settings, plan, trained[m], refit_inputs) for m in needs}
    failed, unchecked, *passed = needs
    with engine.begin() as conn:
        runs.decide(conn, refits[failed]["run_id"], runs.REJECTED, [{"rule": "refit_overlap", "message": "forced"}])
        for model in passed:
            runs.decide(conn, refits[model]["run_id"], runs.PROMOTED, [])
    refit = pipeline.refit_model(settings, plan, trained["twostage"], refit_inputs, components=list(refits.values()))
    used = runs.get(engine, refit["run_id"]).plan["inputs"]["component_runs"]
    assert used == {failed: trained[failed], unchecked: trained[unchecked],
                    **{m: refits[m]["run_id"] for m in passed}}, used
    built = runs.get(engine, refit["run_id"]).data_stats["components"]
    assert {m: c["phase"] for m, c in built.items()} == {failed: "gated", unchecked: "gated",
                                                         **{m: "refit" for m in passed}}


class _Lists:
    """A source's lists as given (candidates only calls .lists)."""

    def __init__(self, frame):
        self.frame = frame

    def lists(self, history, user_ids, n):
        return self.frame[self.frame["user_id"].isin(user_ids) & (self.frame["rank"] <= n)]


def test_candidates_contract_on_given_lists():
    ratings = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [5, 7, 9]})
    history = History(NIGHT, ratings, {1: {5, 7}, 2: {9}})
    frame = lambda rows: pd.DataFrame(rows, columns=["user_id", "movie_id", "rank"])  # noqa: E731
    sources = {"gru4rec": _Lists(frame([(1, 8, 1), (1, 3, 2), (2, 3, 1)])),
               "ease": _Lists(frame([(1, 3, 1), (1, 7, 2), (2, 11, 1), (2, 4, 2)])),  # 7: seen, a leak
               "popularity": _Lists(frame([(3, 2, 1)]))}
    pool = candidates(sources, history, [1, 2, 3], 2)
    assert list(pool.columns) == ["user_id", "movie_id", "rank_gru4rec", "rank_ease", "rank_popularity",
                                  "source_rank"]
    assert list(pool.dtypes) == [np.int64, np.int64, np.float64, np.float64, np.float64, np.int64]
    # sorted by user then movie; NaN where a source does not list the movie; seen movies never
    assert pool.fillna(-1).values.tolist() == [[1, 3, 2, 1, -1, 1], [1, 8, 1, -1, -1, 1], [2, 3, 1, -1, -1, 1],
                                               [2, 4, -1, 2, -1, 2], [2, 11, -1, 1, -1, 1], [3, 2, -1, -1, 1, 1]]
    empty = candidates({name: _Lists(frame([])) for name in SOURCES}, history, [1], 2)
    assert empty.empty and list(empty.columns) == list(pool.columns)
