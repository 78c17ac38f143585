"""Run loo_gru4rec_search.py's candidates in parallel processes, one candidate per
process and one output JSON each, within a wall-clock deadline.

For an accelerator that one small GRU leaves mostly idle (an H200 runs several fits at
once), or for a many-core machine. Each finished candidate's JSON stays in --out-dir even
when the deadline stops the rest; assemble them afterwards, choosing on validation only:

    python bench/loo_gru4rec_parallel.py --configs cands.json --workers 6 --out-dir /tmp/loo
    python bench/loo_gru4rec_search.py $(for f in /tmp/loo/cand_*.json; do echo --previous $f; done) \
        --out eval/loo_gru4rec_search.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SEARCH = Path(__file__).resolve().parent / "loo_gru4rec_search.py"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=Path, required=True, help="JSON list of override dicts on loo.GRU_BASE")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds from start; later candidates are not begun")
    p.add_argument("--search-args", default="", help="extra arguments for each loo_gru4rec_search.py call")
    args, rest = p.parse_known_args(argv)

    started = time.monotonic()
    candidates = json.loads(args.configs.read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def run(i: int) -> str:
        left = args.deadline - (time.monotonic() - started)
        if left <= 0:
            return f"cand_{i:02d}: not begun (deadline)"
        cfg_file = args.out_dir / f"cand_{i:02d}.config.json"
        cfg_file.write_text(json.dumps([candidates[i]]))
        out = args.out_dir / f"cand_{i:02d}.json"
        cmd = [sys.executable, str(SEARCH), "--configs", str(cfg_file), "--out", str(out),
               *args.search_args.split(), *rest]
        with open(args.out_dir / f"cand_{i:02d}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                return f"cand_{i:02d}: stopped at the deadline"
        return f"cand_{i:02d}: exit {rc} after {time.monotonic() - started:.0f} s"

    with ThreadPoolExecutor(args.workers) as pool:
        for line in pool.map(run, range(len(candidates))):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
