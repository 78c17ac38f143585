"""recpipe's ingest against an earlier version of recpipe/ingest.py, side by side in one run,
on generated ratings, for the three shapes of load:

- first_load: every rating into empty tables (`recpipe ingest --all` on a new database);
- backfill: the later half of the ratings into a table holding the earlier half (a batch
  at least as large as the table: indexes rebuilt);
- append_day: the last day into a table holding everything before it (the nightly).

Each round and case gets fresh databases; the setup ingests (untimed) use the current
code, then the timed batch runs with the reference module and with the current one,
alternating, and both must leave the same ratings table (count and checksum).

    git show 8b5015f:recpipe/ingest.py > /tmp/ingest_reference.py
    python bench/ingest_paths.py --reference /tmp/ingest_reference.py --ratings 4M
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from _common import load_average, matmul_gflops, scratch_database, write_result
from recpipe import db
from recpipe import ingest as current
from recpipe.generate import Spec, write

DIGEST = ("SELECT count(*), md5(string_agg(concat_ws(':', user_id, movie_id, rating_x2, rated_at, source_line), ','"
          " ORDER BY user_id, movie_id)) FROM ratings")


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("ingest_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed_case(module, folder: Path, setup: list[tuple], timed: tuple) -> tuple[float, tuple, dict]:
    with scratch_database() as url:
        engine = sa.create_engine(url)
        db.upgrade(engine)
        for start, end in setup:
            current.ingest(engine, folder, start, end, progress=False, fmt="generic")
        started = time.perf_counter()
        report = module.ingest(engine, folder, *timed, progress=False, fmt="generic")
        seconds = time.perf_counter() - started
        with engine.connect() as conn:
            digest = tuple(conn.exec_driver_sql(DIGEST).one())
        engine.dispose()
    return seconds, digest, {"inserted": report.inserted, "duplicate": report.duplicate,
                             "rejected": report.rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="an earlier recpipe/ingest.py")
    parser.add_argument("--ratings", default="4M", help="generated ratings (e.g. 500k, 4M)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", default="first_load,backfill,append_day")
    args = parser.parse_args()
    n = int(float(args.ratings.upper().rstrip("MK")) * (1e6 if args.ratings.upper().endswith("M") else 1e3))
    reference = load_module(args.reference)
    probe_before, load_before = matmul_gflops(), load_average()
    with tempfile.TemporaryDirectory(prefix="recpipe_ingest_paths_") as tmp:
        folder = Path(tmp)
        write(folder, Spec(ratings=n))
        ts = pd.read_csv(folder / "ratings.csv", usecols=["timestamp"])["timestamp"].to_numpy()
        utc = lambda s: datetime.fromtimestamp(int(s), timezone.utc)  # noqa: E731
        middle = utc(np.median(ts))
        last = utc(ts.max())
        last_day = datetime(last.year, last.month, last.day, tzinfo=timezone.utc)
        cases = {
            "first_load": ([], (None, None)),
            "backfill": ([(None, middle)], (middle, None)),
            "append_day": ([(None, last_day)], (last_day, last_day + timedelta(days=1))),
        }
        results = {}
        for case in args.cases.split(","):
            setup, timed = cases[case]
            runs = {"reference": [], "current": []}
            digests, reports = set(), {}
            for _ in range(args.rounds):
                for name, module in (("reference", reference), ("current", current)):
                    seconds, digest, report = timed_case(module, folder, setup, timed)
                    runs[name].append(round(seconds, 3))
                    digests.add(digest)
                    reports[name] = report
                    print(f"{case} {name}: {seconds:.2f} s {report}", flush=True)
            if len(digests) != 1 or reports["reference"] != reports["current"]:
                raise SystemExit(f"{case}: the two versions stored different tables: {digests} {reports}")
            ratio = min(runs["reference"]) / min(runs["current"])
            results[case] = {"seconds": runs, "speedup_best_of": round(ratio, 2), "report": reports["current"],
                             "ratings_after": digests.pop()[0]}
            print(f"{case}: reference {min(runs['reference']):.2f} s, current {min(runs['current']):.2f} s,"
                  f" {ratio:.2f}x", flush=True)
    write_result("ingest_paths", {
        "ratings": n, "reference": str(args.reference), "rounds": args.rounds,
        "probe_before": probe_before, "load_before": load_before,
        "probe_after": matmul_gflops(), "load_after": load_average(), "cases": results,
    })


if __name__ == "__main__":
    main()
