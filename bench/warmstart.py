"""Refit in full vs warm start from the gated weights, side by side, on ML-1M.

The production protocol's night T = 2000-12-01 (`recpipe evaluate --protocol production`'s
cutoff), run as the nightly does it: the gated runs of AutoInt+ and GRU4Rec train on the
ratings before T - eval window (60 days); each is then refitted on every rating before T
(encoders and sessions as of T) twice: in full (from scratch, `--epochs`) and warm-started
from the gated run's verified weights (embedding tables grown to the night's vocabularies,
`--warm-epochs`). Every run is judged like the production protocol: the positives of
[T, T + 365 days) of the users with history before T, the same 1,000+ users, popularity as
the fallback. Refit seconds are what `train` measured (prepare + fit + bundle), same
process, one after the other; a machine probe and the load average are recorded beside.

    python bench/warmstart.py --epochs 3 --warm-epochs 1 --out eval/production_warmstart.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_average, matmul_gflops, scratch_database, source_dir, write_result  # noqa: E402

MODELS = ("autoint", "gru4rec")
KEYS = ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10", "users", "fallback_users")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="gated and full refit epochs (default: config's)")
    parser.add_argument("--warm-epochs", type=int, default=2, help="the warm-started refit's epochs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default="eval/production_warmstart.json")
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    folder = source_dir()
    result = {"command": "python " + " ".join(sys.argv), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              "load_before": load_average(), "matmul": matmul_gflops()}
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="recpipe-bench-") as home:
        from recpipe import pipeline, runs
        from recpipe.config import Settings
        from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW, evaluate_runs
        from recpipe.recommenders.base import Store

        settings = Settings(database_url=url, home=Path(home), source_dir=folder)
        pipeline.ingest_interval(settings, None, None)
        night = DEFAULT_CUTOFF
        # dry runs: rows of their own, nothing live is touched
        plan = pipeline.make_plan(settings, night, models=("popularity", *models), epochs=args.epochs,
                                  dry_run=True, warm_start_epochs=args.warm_epochs)
        gated_inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan),
                                             pipeline.rebuild_sessions(settings, plan))
        refit_inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan, "refit"),
                                             pipeline.rebuild_sessions(settings, plan, "refit"))
        trained, seconds, facts = {}, {}, {}
        for model in models:
            gated = pipeline.train_model(settings, plan, model, gated_inputs)
            trained[f"{model}/gated"], seconds[f"{model}/gated"] = gated["run_id"], gated["seconds"]
            for mode in ("full", "warm_start"):
                started = time.perf_counter()
                refit = pipeline.train_model(settings, plan.with_(refit=mode), model, refit_inputs,
                                             phase="refit", gated_run_id=gated["run_id"])
                key = f"{model}/refit_{mode}"
                trained[key], seconds[key] = refit["run_id"], round(time.perf_counter() - started, 2)
                run = runs.get(pipeline._engine(settings), refit["run_id"])
                facts[key] = {"refit": run.plan.get("refit"), "epochs_run": refit["training"].get("epochs_run"),
                              "train_seconds": refit["seconds"]}
                print(f"{key}: run {refit['run_id']} in {seconds[key]}s ({run.plan.get('refit', {}).get('mode')})",
                      flush=True)
        # The production protocol's judgement: train before T, test [T, T + 365 days).
        eval_plan = pipeline.make_plan(settings, night + DEFAULT_WINDOW, eval_window=DEFAULT_WINDOW,
                                       models=("popularity",), dry_run=True)
        popularity = pipeline.train_model(settings, eval_plan, "popularity", pipeline.night_inputs(None, None))
        engine = pipeline._engine(settings)
        run_list = runs.get_many(engine, [popularity["run_id"], *trained.values()])
        fallback = next(r for r in run_list if r.model == "popularity")
        metrics = evaluate_runs(Store(engine, settings), run_list, fallback, night, night + DEFAULT_WINDOW, 10)
        table = {"popularity": {k: metrics[popularity["run_id"]].get(k) for k in KEYS}}
        for key, run_id in trained.items():
            table[key] = {**{k: metrics[run_id].get(k) for k in KEYS}, "seconds": seconds[key],
                          "run_id": run_id, **facts.get(key, {})}
        ratios = {m: round(seconds[f"{m}/refit_warm_start"] / seconds[f"{m}/refit_full"], 3) for m in models}
    result.update(protocol="production", night=night.isoformat(), eval_window_days=60,
                  test_window=[night.isoformat(), (night + DEFAULT_WINDOW).isoformat()],
                  epochs_full=args.epochs or "config default", warm_start_epochs=args.warm_epochs,
                  results=table, warm_over_full_seconds=ratios, load_after=load_average())
    print(json.dumps({k: {m: (v.get("ndcg_at_10"), v.get("seconds")) for m, v in table.items()}
                      for k in ["ndcg@10, seconds"]}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_result("warmstart", result)


if __name__ == "__main__":
    main()
