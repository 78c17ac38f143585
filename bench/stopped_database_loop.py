"""The stopped-database scenario of tests/test_reliability.py, repeated with the stop timed
to land inside a running query: how often does `recpipe run` print anything beside its
one line?

Each round: a throw-away cluster, a small generated source ingested, `recpipe run` for
one night; once the night has stored its first (or second, or third) model run, the
next query seen active in pg_stat_activity triggers `pg_ctl stop -m fast`. The round
records the exit code, the stage in the line and every other stderr line (TensorFlow's
start-up banner aside). Needs pg_ctl/initdb (as the test does).

    python bench/stopped_database_loop.py --rounds 30 [--out bench/results/stopped_database_loop.json]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_reliability as scenario  # noqa: E402  (the test's cluster, source and night)

from _common import load_average, machine  # noqa: E402
from recpipe.synthetic import write_movielens  # noqa: E402

ACTIVE_QUERY = ("SELECT left(query, 60) FROM pg_stat_activity WHERE state = 'active'"
                " AND pid <> pg_backend_pid() AND datname = 'recpipe'")


def one_round(source: Path, rng: random.Random) -> dict:
    cluster = scenario.Cluster()
    cluster.start()
    try:
        admin = sa.create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE recpipe")
        admin.dispose()
        url = cluster.url("recpipe", scenario.PASSWORD)
        env = scenario._env(url, Path(tempfile.mkdtemp(prefix="recpipe-loop-")), source)
        assert scenario.recpipe("ingest", "--all", env=env).returncode == 0
        night = ["run", "--as-of", scenario.NIGHT_2.date().isoformat(), "--epochs", "1", "--overrides",
                 scenario.FAST]
        proc = subprocess.Popen([sys.executable, "-m", "recpipe.cli", *night], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        after_runs, query = rng.choice([1, 2, 3]), None
        with engine.connect() as conn:
            while proc.poll() is None and (conn.exec_driver_sql("SELECT count(*) FROM model_runs").scalar() or 0) \
                    < after_runs:
                time.sleep(0.05)
                conn.commit()
            deadline = time.monotonic() + 60
            while proc.poll() is None and query is None and time.monotonic() < deadline:
                query = conn.exec_driver_sql(ACTIVE_QUERY).scalar()
                conn.commit()
        engine.dispose()
        cluster.stop()
        _, stderr = proc.communicate(timeout=300)
        lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(scenario.TENSORFLOW_BANNER)]
        ours = [ln for ln in lines if "database is unreachable or failed" in ln]
        stage = ours[0].split("(stage ", 1)[1].split(")", 1)[0] if ours and "(stage " in ours[0] else None
        return {"exit_code": proc.returncode, "after_model_runs": after_runs, "stopped_during": query,
                "stage": stage, "one_line": len(ours) == 1, "other_lines": [ln for ln in lines if ln not in ours]}
    finally:
        cluster.remove()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    source = write_movielens(Path(tempfile.mkdtemp(prefix="recpipe-loop-src-")), scenario.SPEC)
    with open(source / "ratings.dat", "ab") as fh:
        fh.write(scenario.HOSTILE_RATINGS)
    started, load_before, rounds = time.perf_counter(), load_average(), []
    for k in range(args.rounds):
        rounds.append(one_round(source, rng))
        r = rounds[-1]
        print(f"{k + 1}/{args.rounds}: exit {r['exit_code']}, stage {r['stage']}, one line {r['one_line']},"
              f" other lines {r['other_lines']}", flush=True)
    summary = {"rounds": len(rounds), "exit_1": sum(r["exit_code"] == 1 for r in rounds),
               "one_line": sum(r["one_line"] for r in rounds),
               "stopped_inside_a_query": sum(r["stopped_during"] is not None for r in rounds),
               "rounds_with_other_lines": sum(bool(r["other_lines"]) for r in rounds)}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "stopped_database_loop", "machine": machine(),
                                        "load_before": load_before, "load_after": load_average(),
                                        "seconds": round(time.perf_counter() - started, 1),
                                        "command": "python bench/stopped_database_loop.py "
                                                   + " ".join(argv or sys.argv[1:]),
                                        "summary": summary, "rounds": rounds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
