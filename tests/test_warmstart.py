"""Warm-started refits: the refit continues from the gated run's verified weights, its
embedding tables grown to the night's vocabularies, and says so in the registry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpipe import pipeline, registry, runs
from recpipe.plan import PlanError
from recpipe.recommenders.base import Store, grow_rows
from recpipe.train import TrainRequest, train
from test_refit import FAST, OPEN_GATE, fresh_source  # noqa: F401  (fixture)


def test_grow_rows_copies_known_ids_and_keeps_fresh_rows_for_new_ones():
    old = np.arange(6, dtype=np.float32).reshape(3, 2)
    fresh = np.full((4, 2), -1.0, dtype=np.float32)
    grown = grow_rows(old, np.array([2, -1, 0, -1]), fresh)
    assert grown.tolist() == [[4, 5], [-1, -1], [0, 1], [-1, -1]]
    columns = grow_rows(old.T, np.array([1, -1]), np.zeros((2, 2), np.float32), axis=1)
    assert columns.tolist() == [[2, 0], [3, 0]]


def test_refit_mode_is_a_validated_plan_setting(settings):
    from datetime import datetime, timezone

    night = datetime(2000, 12, 1, tzinfo=timezone.utc)
    plan = pipeline.make_plan(settings, night, refit="warm_start", warm_start_epochs=3)
    assert (plan.refit, plan.warm_start_epochs) == ("warm_start", 3)
    assert type(plan).from_json(plan.to_json()) == plan
    assert pipeline.make_plan(settings, night).refit == "full"
    for bad in ({"refit": "warm"}, {"warm_start_epochs": 0}, {"warm_start_epochs": True}):
        with pytest.raises(PlanError, match="refit|warm_start_epochs"):
            pipeline.make_plan(settings, night, **bad)


def test_a_warm_started_refit_starts_from_the_gated_weights_grown_to_the_night(engine, settings, fresh_source):
    from recpipe.ingest import ingest

    source, night, movie, user = fresh_source
    ingest(engine, source)
    plan = pipeline.make_plan(settings.with_(source_dir=source), night, epochs=1, model_overrides=FAST,
                              gate_overrides=OPEN_GATE, models=("popularity", "autoint", "gru4rec"),
                              refit="warm_start", warm_start_epochs=1)
    result = pipeline.run_nightly(settings, plan)
    refits = {r.model: r for r in map(lambda d: runs.get(engine, d["run_id"]), result["refits"]["decisions"])}
    for model in ("autoint", "gru4rec"):
        record = refits[model].plan["refit"]
        assert record["mode"] == "warm_start" and record["from_run_id"] == refits[model].gated_run_id, record
        assert refits[model].metrics["training"]["refit_mode"] == "warm_start"
    assert refits["popularity"].plan["refit"]["mode"] == "full"  # nothing to continue from
    assert "no weights" in refits["popularity"].plan["refit"]["why_full"]
    # the night's newcomers got rows of their own: a user and a movie the gated run never saw
    assert refits["autoint"].plan["refit"]["grown_fields"]["user_id"]["new"] >= 1
    assert refits["autoint"].plan["refit"]["grown_fields"]["movie_id"]["new"] >= 1
    items = refits["gru4rec"].plan["refit"]["items"]
    assert items["known"] > 0 and items["known"] + items["new"] == items["refit"]

    # The grown starting weights, checked row by row against the gated model.
    store = Store(engine, settings)
    gated = runs.get(engine, refits["autoint"].gated_run_id)
    recommender = registry.recommender("autoint")
    inputs = pipeline.night_inputs({"encodings_id": refits["autoint"].data_stats["encodings_artifact_id"]}, None)
    config = plan.model_config("autoint")
    data = recommender.prepare(store, plan, inputs, config, night)
    with gated.open_artifact(settings) as bundle:
        weights, _ = recommender.warm_start_weights(bundle, gated, store, data, config)
        from recpipe.models.autoint.network import load_model

        old_table = load_model(bundle.path("autoint.keras")).get_layer("embedding").get_weights()[0]
    table = weights["embedding"][0]
    old_enc, new_enc = store.encoders(gated.data_stats["encodings_artifact_id"]), store.encoders(inputs.encodings_id)
    f = list(new_enc.fields).index("user_id")
    new_off = int(np.sum(new_enc.field_dims[:f]))
    old_off = int(np.sum(old_enc.field_dims[:f]))
    known = old_enc.vocabularies["user_id"][5]
    new_code = new_enc.vocabularies["user_id"].index(known) + 1
    assert np.array_equal(table[new_off + new_code], old_table[old_off + 6]), "a known user keeps its row"
    newcomer = new_enc.vocabularies["user_id"].index(str(user)) + 1
    assert np.array_equal(table[new_off + newcomer], old_table[old_off]), "a new user starts as 'unknown'"
    assert table.shape[0] == sum(new_enc.field_dims) > old_table.shape[0]


def test_a_warm_start_that_cannot_be_done_refits_in_full_and_says_why(engine, settings, fresh_source):
    from recpipe.ingest import ingest

    source, night, _, _ = fresh_source
    ingest(engine, source)
    plan = pipeline.make_plan(settings, night, epochs=1, model_overrides={"gru4rec": FAST["gru4rec"]},
                              gate_overrides=OPEN_GATE, models=("popularity", "gru4rec"), refit="warm_start")
    inputs = pipeline.night_inputs(None, pipeline.rebuild_sessions(settings, plan))
    gated = train(engine, settings, TrainRequest(plan, "gru4rec", inputs))
    wider = plan.with_(model_overrides={"gru4rec": {**FAST["gru4rec"], "hidden": 24, "embedding_dim": 24}})
    refit_inputs = pipeline.night_inputs(None, pipeline.rebuild_sessions(settings, plan, "refit"))
    refit = train(engine, settings, TrainRequest(wider, "gru4rec", refit_inputs, "refit", gated.run_id))
    record = runs.get(engine, refit.run_id).plan["refit"]
    assert record["mode"] == "full" and "hidden" in record["why_full"], record
