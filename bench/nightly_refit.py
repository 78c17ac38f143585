"""The nightly's wall time shipping the gated runs against refitting them, side by side.

    python bench/nightly_refit.py [--epochs 1|configured] [--gate open|configured] [--rounds 1]

Each night runs the whole nightly sequence (`recpipe run`: pipeline.run_nightly, one
process) in a fresh scratch database holding the same ratings (ML-1M from
../shared/data/ml-1m or RECPIPE_SOURCE_DIR; ingest not timed), as of the midnight after
the newest rating (the night `make run` runs). Per round: ship=gated (the gated runs
are published, no refit stages) then ship=refit (every promoted gated configuration is
refitted in full on every rating before the night, checked, and the refit published).

Only promoted runs are refitted, so the refit's cost depends on what the gate promotes:
--gate open (default) promotes every model (no floors, no baseline to beat): the cost
of refitting them all; --gate configured: recpipe/gate.yaml decides, as `make run`.
The stated epochs apply to both nights. A machine probe and the load are recorded.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_average, matmul_gflops, scratch_database, source_dir, write_result  # noqa: E402


def open_gate() -> dict:
    from recpipe.gate import GateRules

    floors = GateRules.load().floors
    return {"must_beat_baseline": False, "min_test_users": 1,
            "floors": {m: {k: 0.0 for k in f} for m, f in floors.items()}}


def one_night(folder: Path, ship: str, epochs: int | None, gate: dict | None) -> dict:
    from recpipe import pipeline
    from recpipe.cli import default_as_of
    from recpipe.config import PipelineParams, Settings

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="recpipe-bench-") as home:
        settings = Settings(database_url=url, home=Path(home), source_dir=folder)
        pipeline.ingest_interval(settings, None, None)
        night = default_as_of(settings)
        plan = pipeline.make_plan(settings, night, PipelineParams(ship=ship, refit="full"), epochs=epochs,
                                  gate_overrides=gate)
        load = load_average()
        started = time.perf_counter()
        result = pipeline.run_nightly(settings, plan)
        seconds = time.perf_counter() - started
    timings = result["timings_s"]
    return {"ship": ship, "night": night.isoformat(), "wall_s": round(seconds, 1), "load_before": load,
            "load_after": load_average(), "timings_s": timings,
            "training_s": round(sum(v for k, v in timings.items() if k.startswith("train_")), 1),
            "refit_s": round(sum(v for k, v in timings.items() if k.startswith(("refit_", "rebuild_refit",
                                                                                 "check_refits"))), 1),
            "promoted": result["gate"]["promoted"], "refits_promoted": result["refits"]["promoted"],
            "published": [p.get("model") if isinstance(p, dict) else p
                          for p in (result["publication"] or {}).get("published", [])]}


def _epochs(text: str) -> int | None:
    return None if text == "configured" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=_epochs, default=1,
                        help="every learned model's epochs, both nights; 'configured': each model's own (as make run)")
    parser.add_argument("--gate", choices=["open", "configured"], default="open")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="nightly_refit")
    args = parser.parse_args()
    folder = source_dir()
    gate = open_gate() if args.gate == "open" else None
    payload = {"command": "python " + " ".join(sys.argv), "gate": args.gate,
               "epochs": "configured" if args.epochs is None else args.epochs,
               "probe_before": matmul_gflops(), "load_before": load_average(), "nights": []}
    for round_no in range(args.rounds):
        for ship in ("gated", "refit"):
            night = one_night(folder, ship, args.epochs, gate)
            night["round"] = round_no + 1
            payload["nights"].append(night)
            print(f"round {round_no + 1} ship={ship}: {night['wall_s']:.0f} s (training {night['training_s']:.0f} s,"
                  f" refit stages {night['refit_s']:.0f} s, load {night['load_before']})", flush=True)
    gated = min(n["wall_s"] for n in payload["nights"] if n["ship"] == "gated")
    refit = min(n["wall_s"] for n in payload["nights"] if n["ship"] == "refit")
    payload.update(probe_after=matmul_gflops(), load_after=load_average(), gated_wall_s=gated, refit_wall_s=refit,
                   refit_over_gated=round(refit / gated, 3))
    print(f"nightly wall time: gated {gated:.0f} s, refit {refit:.0f} s: {refit / gated:.2f}x")
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
