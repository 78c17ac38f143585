"""GRU4Rec configuration search on the `loo` protocol (ML-1M), chosen on the validation
targets only; the chosen one is scored on test.

Every candidate is `recpipe.evaluation.loo`'s GRU_BASE plus one override dict, fitted on
train and early-stopped on validation NDCG@10 (`loo.run_gru4rec`). With `--cache`, a
candidate fitted before (same config, same train data) is loaded, so the search can be
run one candidate per process and assembled afterwards at no training cost.
`--previous` (repeatable) adds the choice log of an earlier eval/loo.json or of an
earlier search's output (candidates not refitted here); a previous candidate can win, and
then its recorded test figure is reported. So candidates fitted in parallel processes, one
--out each, are assembled by a last call with only --previous.

    python bench/loo_gru4rec_search.py --configs search.json --cache /tmp/gru_cache \
        --previous old_loo.json --out eval/loo_gru4rec_search.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ML1M, accelerators, load_average, matmul_gflops  # noqa: E402

K = 10


def main(argv=None) -> int:
    from recpipe.evaluation import loo
    from recpipe.models.gru4rec import GRU4RecConfig
    from recpipe.source import load_ml1m_frames

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ML1M)
    p.add_argument("--configs", type=Path, default=None, help="JSON list of override dicts on loo.GRU_BASE")
    p.add_argument("--lengths", default="50,all", help="history lengths L scored on validation")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--previous", type=Path, action="append", default=[],
                   help="an earlier loo JSON or search output whose GRU4Rec log joins (repeatable)")
    p.add_argument("--notes", type=Path, default=None, help="JSON object merged into the output (e.g. aborted runs)")
    p.add_argument("--out", type=Path, default=Path("eval/loo_gru4rec_search.json"))
    args = p.parse_args(argv)

    load_before = load_average()
    started = time.perf_counter()
    split = loo.loo_split(load_ml1m_frames(args.data)[0])
    overrides = json.loads(args.configs.read_text()) if args.configs else []
    cfgs = [GRU4RecConfig.from_dict(loo.GRU_BASE | o) for o in overrides]
    lengths = [None if x == "all" else int(x) for x in args.lengths.split(",")]
    if not cfgs and not args.previous:
        p.error("nothing to choose from: give --configs with candidates or --previous")
    log, chosen = [], None
    if cfgs:
        res = loo.run_gru4rec(split, cfgs, lengths, cache=args.cache, verbose=2)
        for entry in res["choice_log"]:
            entry["source"] = "this search"
            entry["seconds_per_epoch"] = entry["fit_seconds"] / max(entry["epochs_run"], 1)
        chosen = {"config": res["config"], "validation": res["validation"], "test": res["test"],
                  "source": "this search"}
        log = list(res["choice_log"])
    for path in args.previous:
        entries, prev = _previous(path)
        log += entries
        if chosen is None or prev["validation"][f"ndcg@{K}"] > chosen["validation"][f"ndcg@{K}"]:
            chosen = prev
    result = {
        "protocol": loo.PROTOCOL,
        "chosen_by": f"validation NDCG@{K} (best epoch of each fit, then the history length L); test only for the chosen",
        "chosen": chosen,
        "search_log": sorted(log, key=lambda e: -e[f"ndcg@{K}"]),
        "base": loo.GRU_BASE,
        "overrides": overrides,
        "measured_at": datetime.now(timezone.utc).isoformat(),
        "seconds": time.perf_counter() - started,
        "probe": matmul_gflops(),
        "load_before": load_before,
        "load_after": load_average(),
        "cpus": os.cpu_count(),
        "accelerators": accelerators(),
        "command": "python " + " ".join([Path(__file__).relative_to(Path.cwd()).as_posix()
                                         if Path(__file__).is_relative_to(Path.cwd()) else __file__]
                                        + (argv if argv is not None else sys.argv[1:])),
    }
    if args.notes:
        result.update(json.loads(args.notes.read_text()))
    print(f"\nchosen ({chosen['source']}): {json.dumps(chosen['config'])}")
    print(f"validation {loo.fmt(chosen['validation'])}\ntest       {loo.fmt(chosen['test'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


def _previous(path: Path) -> tuple[list, dict]:
    """(choice-log entries, chosen) of an eval/loo.json or of this script's own output."""
    doc = json.loads(path.read_text())
    if "search_log" in doc:  # this script's output: its entries keep their own source
        entries = [{**e, "source": e["source"] if e.get("source") != "this search" else str(path)}
                   for e in doc["search_log"]]
        chosen = doc["chosen"]
        if chosen.get("source") == "this search":
            chosen = {**chosen, "source": str(path)}
        return entries, chosen
    prev = doc["models"]["gru4rec"]
    entries = [{**e, "source": str(path), "seconds_per_epoch": e["fit_seconds"] / max(e["epochs_run"], 1)}
               for e in prev["choice_log"]]
    return entries, {"config": prev["config"], "validation": prev["validation"], "test": prev["test"],
                     "source": str(path)}


if __name__ == "__main__":
    raise SystemExit(main())
