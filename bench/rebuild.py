"""Wall time and peak memory of the two nightly rebuilds on full ML-1M.

Each rebuild runs in its own process (so peak RSS is its own) against a scratch
database holding all of ML-1M: encodings as of 2003-03-01, sessions in production
mode (30-minute gaps), plus the seed's 2-hour-bucket evaluation split and the
30-minute-gap evaluation split whose statistics the issue asks for.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from _common import peak_rss_mib, scratch_database, source_dir, write_result

AS_OF = datetime(2003, 3, 1, tzinfo=timezone.utc)


def one(kind: str, url: str, home: str) -> None:
    from recpipe.config import Settings
    from recpipe.features import build_encodings
    from recpipe.sessions import SEED002_PARAMS, SessionParams, build_sessions

    settings = Settings(database_url=url, home=Path(home))
    engine = sa.create_engine(url)
    started = time.perf_counter()
    if kind == "encodings":
        artifact = build_encodings(engine, settings, AS_OF)
        result = {"artifact_id": artifact.artifact_id, "field_dims": artifact.details["field_dims"]}
    elif kind == "sessions":
        result = build_sessions(engine, AS_OF, SessionParams(), "production")
    elif kind == "sessions-seed-bucket":
        result = build_sessions(engine, AS_OF, SEED002_PARAMS, "evaluation")
    else:
        result = build_sessions(engine, AS_OF, SessionParams(), "evaluation")
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(), "result": result},
                     default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one, args.url, args.home)

    from recpipe import db
    from recpipe.ingest import ingest

    folder = source_dir()
    results = {}
    with scratch_database() as url, __import__("tempfile").TemporaryDirectory() as home:
        engine = sa.create_engine(url)
        db.upgrade(engine)
        ingest(engine, folder, progress=False)
        engine.dispose()
        for kind in ("encodings", "sessions", "sessions-seed-bucket", "sessions-gap-evaluation"):
            done = subprocess.run([sys.executable, __file__, "--one", kind, "--url", url, "--home", home],
                                  capture_output=True, text=True, check=True)
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{kind:<24} {results[kind]['seconds']:6.1f}s  peak RSS {results[kind]['peak_rss_mib']:7.0f} MiB")
    print("field_dims:", results["encodings"]["result"]["field_dims"])
    for kind in ("sessions-seed-bucket", "sessions-gap-evaluation", "sessions"):
        for split, st in results[kind]["result"]["stats"].items():
            print(f"  {kind:<24} {split:<10} events {st['events']:>8,} sessions {st['sessions']:>6,} items {st['items']:>5,}")
    write_result("rebuild", {"as_of": AS_OF, "goal_seconds_each": 15, "rebuilds": results})


if __name__ == "__main__":
    main()
