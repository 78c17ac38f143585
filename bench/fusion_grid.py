"""Two-stage fusion weights: the default grid beside a wider one, on the same component runs.

Run after `recpipe evaluate --protocol production --model all --epochs 3 --out F` on the
same database (RECPIPE_DATABASE_URL): its JSON names the component runs. For each grid,
twostage is trained again on those runs (N and the weights chosen on its 30-day
validation window, as every night) and evaluated on the production test window with
the same fallback runs, so the grids differ only in the choices they offer. The test
window never takes part in a choice.

    python bench/fusion_grid.py --from eval/production_twostage.json [--grids "0,0.5,1,2;0,0.5,1,2,4,8"]
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from _common import load_average, matmul_gflops, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="the JSON `recpipe evaluate --protocol production --out` wrote")
    parser.add_argument("--grids", default="0,0.5,1,2;0,0.5,1,2,4,8", help="source_weights grids, ';'-separated")
    args = parser.parse_args()

    from recpipe import pipeline, registry
    from recpipe.config import Settings
    from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW

    produced = json.loads(args.source.read_text())
    cutoff = datetime.fromisoformat(produced["cutoff"]) if produced.get("cutoff") else DEFAULT_CUTOFF
    window = DEFAULT_WINDOW
    runs_by_model = {m: int(r) for m, r in produced["runs"].items()}
    settings = Settings.from_env()
    result = {"from": str(args.source), "component_runs": runs_by_model, "load_before": load_average(),
              "matmul": matmul_gflops(), "grids": []}
    baselines = [runs_by_model[m] for m in registry.baseline_names() if m in runs_by_model]
    for text in args.grids.split(";"):
        grid = [float(x) for x in text.split(",")]
        plan = pipeline.make_plan(settings, cutoff + window, eval_window=window, epochs=produced.get("epochs"),
                                  dry_run=True, models=tuple(runs_by_model),
                                  model_overrides={"twostage": {"source_weights": grid}})
        inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan),
                                       pipeline.rebuild_sessions(settings, plan))
        needs = {c: runs_by_model[c] for c in registry.spec("twostage").needs}
        started = time.perf_counter()
        run_id = pipeline.train_model(settings, plan, "twostage", inputs.with_components(needs))["run_id"]
        seconds = time.perf_counter() - started
        evaluated = pipeline.evaluate(settings, plan, [*baselines, run_id])
        test = evaluated["metrics"][str(run_id)]
        from recpipe import runs

        stats = runs.get(pipeline._engine(settings), run_id).data_stats
        row = {"grid": grid, "run_id": run_id, "fit_seconds": round(seconds, 1), "chosen_n": stats["n"],
               "chosen_weights": stats["weights"], "combinations_tried": stats.get("combinations_tried"),
               "validation_best": max(stats["choice_log"], key=lambda r: r["ndcg_at_10"]),
               "test": {k: test[k] for k in ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10", "users")}}
        result["grids"].append(row)
        print(json.dumps(row, default=str), flush=True)
    result["load_after"] = load_average()
    write_result("fusion_grid", result)


if __name__ == "__main__":
    main()
