"""The night plan: built once, validated before anything runs, carried as JSON to every
stage and to the training process."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from recpipe import pipeline, registry, runs
from recpipe.ingest import ingest
from recpipe.plan import NightInputs, NightPlan, PlanError
from recpipe.train import TrainRequest, train_in_fresh_process

NIGHT = datetime(2000, 12, 1, tzinfo=timezone.utc)


def test_plan_round_trips_through_json(settings):
    plan = pipeline.make_plan(settings, NIGHT, epochs=2, model_overrides={"gru4rec": {"hidden": 16}},
                              gate_overrides={"tolerance": 0.2}, dry_run=True, context="dag_id=x run_id=y")
    again = NightPlan.from_json(json.dumps(json.loads(plan.to_json())))
    assert again == plan
    assert again.training_cutoff == NIGHT - plan.eval_window
    assert again.gate_rules["tolerance"] == 0.2 and again.models == registry.names()
    request = TrainRequest(plan, "gru4rec", NightInputs(encodings_id=3, sessions_build_id=4))
    assert TrainRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize("choices, message", [
    ({"epochs": -1}, "epochs must be an integer >= 1"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"gate_overrides": {"min_test_users": "abc"}}, "min_test_users"),
    ({"gate_overrides": {"tolerence": 0.2}}, "unknown gate setting 'tolerence'"),
    ({"gate_overrides": {"tolerance": 5}}, "tolerance"),
    ({"gate_overrides": {"floors": {"autoint": {"ndcg": 0.1}}}}, "unknown metric 'ndcg'"),
    ({"model_overrides": {"autoint": {"hiden": 3}}}, "unknown autoint config keys"),
    ({"model_overrides": {"popularity": {"window_days": -3}}}, "window_days"),
    ({"models": ("autoint",)}, "needs a baseline"),
    ({"models": ("popularity", "sasrec")}, "unknown model 'sasrec'"),
])
def test_bad_parameters_are_refused_before_anything_runs(settings, choices, message):
    with pytest.raises(PlanError, match=message):
        pipeline.make_plan(settings, NIGHT, **choices)


def test_training_process_receives_the_plan_and_returns_a_typed_response(engine, settings, caplog):
    """A model trained in a fresh process: its run records the plan's night and cutoff and
    its full config, which loads back unchanged; its output reaches the log at INFO."""
    ingest(engine, settings.source_dir)
    caplog.set_level("INFO", logger="recpipe.train")
    plan = pipeline.make_plan(settings, NIGHT, eval_window=timedelta(days=45),
                              model_overrides={"popularity": {"window_days": 30}})
    response = train_in_fresh_process(settings, settings.database_url, TrainRequest(plan, "popularity"))
    run = runs.get(engine, response.run_id)
    assert response.model == "popularity" and response.night == NIGHT.isoformat()
    assert run.as_of == NIGHT
    assert run.plan["training_cutoff"] == (NIGHT - timedelta(days=45)).isoformat()
    assert run.data_stats["train_until"] == (NIGHT - timedelta(days=45)).isoformat()
    assert run.config == {"window_days": 30}
    assert registry.recommender("popularity").make_config(run.config, None) == run.config
    relayed = [r for r in caplog.records if r.name == "recpipe.train" and r.getMessage().startswith("[popularity] ")]
    assert relayed and all(r.levelname == "INFO" for r in relayed)
    assert any("trained popularity" in r.getMessage() for r in relayed)
