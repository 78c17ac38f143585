"""The per-user seen movies every scoring stage loads (History.seen): a dict of Python
sets (before) against SeenMovies (one CSR of arrays), side by side in one run.

Each side runs in its own process on the same generated ratings (`--ratings`, default
25M: the scale benchmark's largest night): RSS added by the structure, seconds to build
it, and seconds to flatten every user's seen movies (what the exclusions of a
publication shard do). Also the machine probe and the load before and after.

    python bench/seen_memory.py [--ratings 25000000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_average, matmul_gflops, write_result

SIDES = ("dict_of_sets", "seen_movies")


def child(side: str, folder: str) -> dict:
    import numpy as np
    import pandas as pd
    import psutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recpipe.models.topk import flatten, group_lists
    from recpipe.recommenders.base import SeenMovies

    ratings = pd.read_csv(Path(folder) / "ratings.csv", usecols=["user_id", "item_id"],
                          dtype={"user_id": np.int64, "item_id": np.int64}).rename(columns={"item_id": "movie_id"})
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    if side == "dict_of_sets":  # History.load before SeenMovies
        seen = {int(u): set(m.tolist()) for u, m in ratings.groupby("user_id")["movie_id"]}
    else:
        seen = SeenMovies(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy())
    build = time.perf_counter() - started
    added = process.memory_info().rss - before
    users = sorted(seen)
    started = time.perf_counter()
    rows, values = flatten(group_lists(seen, users))
    flat = time.perf_counter() - started
    return {"side": side, "ratings": len(ratings), "users": len(users), "flattened": int(len(values)),
            "rss_added_gib": round(added / 2**30, 3), "build_s": round(build, 2), "flatten_s": round(flat, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=25_000_000)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recpipe.generate import Spec, write

    result = {"probe_before": matmul_gflops(), "load_before": load_average(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp, Spec(ratings=args.ratings, seed=0), "generic")
        for side in SIDES:
            out = subprocess.run([sys.executable, __file__, "--child", side, "--folder", tmp],
                                 check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            print(run, flush=True)
            result["runs"].append(run)
    result["probe_after"], result["load_after"] = matmul_gflops(), load_average()
    old, new = result["runs"]
    result["rss_ratio"] = round(old["rss_added_gib"] / new["rss_added_gib"], 1)
    result["same_flattened"] = old["flattened"] == new["flattened"]
    print(f"RSS added: {old['rss_added_gib']} -> {new['rss_added_gib']} GiB ({result['rss_ratio']}x);"
          f" build {old['build_s']} -> {new['build_s']} s; flatten {old['flatten_s']} -> {new['flatten_s']} s")
    write_result("seen_memory", result)


if __name__ == "__main__":
    main()
