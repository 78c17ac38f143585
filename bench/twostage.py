"""Publication time of AutoInt+'s lists against two-stage lists, in one run.

A scratch database holds all of ML-1M; the night 2003-03-01 (every user has history)
trains popularity, EASE, AutoInt+ and GRU4Rec (reduced epochs: the figure is scoring
time, not quality), then twostage, which chooses N on its validation window. Both
runs are then loaded and timed producing the published top-10 of every known user
exactly as `publish` does (`LoadedRun.lists`): AutoInt+ scores users x catalogue,
twostage builds each user's candidates from GRU4Rec, EASE and popularity and scores
users x candidates. Loading is timed apart. A machine probe (fp32 matmul) and the load
averages before and after say what the machine was doing.

    python bench/twostage.py [--epochs 1] [--repeat 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _common import load_average, matmul_gflops, peak_rss_mib, scratch_database, source_dir, write_result

NIGHT = datetime(2003, 3, 1, tzinfo=timezone.utc)


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="AutoInt+ and GRU4Rec epochs (timing only)")
    parser.add_argument("--repeat", type=int, default=1, help="timed publications of each (best kept)")
    args = parser.parse_args()
    folder = source_dir()
    result: dict = {"night": NIGHT.isoformat(), "epochs": args.epochs, "keras_backend":
                    os.environ.get("KERAS_BACKEND", "tensorflow"), "load_before": load_average(),
                    "matmul": matmul_gflops()}
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="recpipe-bench-") as home:
        from recpipe import pipeline, registry, runs
        from recpipe.config import Settings
        from recpipe.db import migrated_engine
        from recpipe.recommenders.base import History, Store
        from recpipe.recommenders.twostage import candidates
        from recpipe.scoring import LoadedRun

        settings = Settings(database_url=url, home=Path(home), source_dir=folder)
        pipeline.ingest_interval(settings, None, None)
        plan = pipeline.make_plan(settings, NIGHT, models=registry.with_needs(["twostage"]), epochs=args.epochs,
                                  dry_run=True)
        inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan),
                                       pipeline.rebuild_sessions(settings, plan))
        trained: dict[str, int] = {}
        train_seconds = {}
        for model in registry.training_order(plan.models):
            needs = {m: trained[m] for m in registry.spec(model).needs}
            response, train_seconds[model] = timed(pipeline.train_model, settings, plan, model,
                                                   inputs.with_components(needs))
            trained[model] = response["run_id"]
        engine = migrated_engine(settings)
        twostage_run = runs.get(engine, trained["twostage"])
        result["twostage"] = {k: twostage_run.data_stats[k] for k in
                              ("n", "chosen_because", "choice_log", "validation_users", "validation_from")}
        result["train_seconds"] = {m: round(s, 2) for m, s in train_seconds.items()}
        store = Store(engine, settings)
        history = History.load(store, plan.night)
        users = history.users
        autoint, load_autoint = timed(LoadedRun, store, runs.get(engine, trained["autoint"]))
        twostage, load_twostage = timed(LoadedRun, store, twostage_run)
        catalogue = len(store.movies())
        full_times, two_times = [], []
        for _ in range(args.repeat):
            full, seconds = timed(autoint.lists, history, users, 10)
            full_times.append(seconds)
            two, seconds = timed(twostage.lists, history, users, 10)
            two_times.append(seconds)
        pool, candidate_seconds = timed(candidates, twostage.model.sources, history, users, twostage.model.n)
        a = full.groupby("user_id")["movie_id"].agg(frozenset)
        b = two.groupby("user_id")["movie_id"].agg(frozenset)
        common = a.index.intersection(b.index)
        unseen_pairs = int(sum(catalogue - len(history.seen.get(int(u), ())) for u in users))
        result.update({
            "users": int(len(users)), "catalogue": catalogue, "n": twostage.model.n,
            "autoint_full": {"seconds": min(full_times), "all_seconds": full_times,
                             "pairs_scored": int(len(users)) * catalogue, "unseen_pairs": unseen_pairs,
                             "load_seconds": load_autoint, "lists_rows": int(len(full))},
            "twostage": {**result["twostage"], "seconds": min(two_times), "all_seconds": two_times,
                         "pairs_scored": int(len(pool)), "candidates_per_user": float(len(pool) / len(users)),
                         "candidate_stage_seconds": candidate_seconds, "load_seconds": load_twostage,
                         "lists_rows": int(len(two))},
            "speedup": min(full_times) / min(two_times),
            "same_top10_users": float(np.mean([a[u] == b[u] for u in common])),
            "mean_jaccard_top10": float(np.mean([len(a[u] & b[u]) / len(a[u] | b[u]) for u in common])),
        })
    result["load_after"] = load_average()
    result["peak_rss_mib"] = peak_rss_mib()
    f, t = result["autoint_full"], result["twostage"]
    print(f"{result['users']} users x {result['catalogue']} movies: AutoInt+ full catalogue {f['seconds']:.1f}s"
          f" ({f['pairs_scored']:,} pairs); twostage N={t['n']} {t['seconds']:.1f}s ({t['pairs_scored']:,} pairs,"
          f" candidates {t['candidate_stage_seconds']:.1f}s): {result['speedup']:.1f}x;"
          f" load {result['load_before']['load_1m']:.1f} -> {result['load_after']['load_1m']:.1f}")
    write_result("twostage_publication", result)


if __name__ == "__main__":
    main()
