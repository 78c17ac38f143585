"""GRU4Rec variants on the production protocol (ML-1M, T = 2000-12-01, one-year window),
trained and judged in one process beside the baselines (trained once), on the same users.

Each variant is a set of gru4rec overrides; every figure is what
`recpipe evaluate --protocol production --model gru4rec --epochs E --overrides '<JSON>'`
gives for it. Needs a database with ML-1M ingested (RECPIPE_DATABASE_URL).

    python bench/gru4rec_variants.py --epochs 2 --variants '{"last_session": {"serving": "last_session"}}' \
        --out eval/production_gru4rec_variants.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

METRICS = ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10", "users", "fallback_users")


def test_by_serving(settings, run_id: int, lengths) -> list[dict]:
    """Test figures of one trained run served every way (last session, each history
    length): for the record only, the run's own choice was made on validation. No
    fallback lists here (a user the model cannot serve scores 0)."""
    import numpy as np

    from recpipe import pipeline, runs
    from recpipe.evaluation.metrics import ranking_metrics
    from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW, holdout
    from recpipe.recommenders.base import History, Store
    from recpipe.scoring import LoadedRun

    store = Store(pipeline._engine(settings), settings)
    test = holdout(store, DEFAULT_CUTOFF, DEFAULT_CUTOFF + DEFAULT_WINDOW)
    positives = test[test["label"] == 1][["user_id", "movie_id"]]
    users = np.sort(positives["user_id"].unique())
    history = History.load(store, DEFAULT_CUTOFF)
    loaded = LoadedRun(store, runs.get(store.engine, run_id))
    network, params, _ = loaded.model
    rows = []
    for serving in [{"mode": "last_session"}] + [{"mode": "history", "history_length": n} for n in lengths]:
        lists = loaded.recommender.recommend((network, params, serving), store, history, users, 10)
        m = ranking_metrics(lists, positives, len(store.movies()), 10)
        rows.append({**serving, **{k: m[k] for k in METRICS[:4]}, "served_users": int(lists["user_id"].nunique())})
        print(rows[-1], flush=True)
    return rows


def validation_popularity(settings, days: int = 30) -> dict:
    """The popularity baseline (its 90-day window) on GRU4Rec's serving-choice validation
    window (the last `days` before the cutoff, histories as of its start): the reference
    for the validation figures in each run's serving choice log."""
    from datetime import timedelta

    import numpy as np
    import pandas as pd

    from recpipe import pipeline
    from recpipe.evaluation.metrics import ranking_metrics
    from recpipe.evaluation.production import DEFAULT_CUTOFF, POSITIVE_MIN_RATING
    from recpipe.models.popularity import fit_popularity, score_top_k
    from recpipe.recommenders.base import Store

    store = Store(pipeline._engine(settings), settings)
    ratings = store.ratings(before=DEFAULT_CUTOFF)
    split = DEFAULT_CUTOFF - timedelta(days=days)
    before = ratings[ratings["rated_at"] < pd.Timestamp(split)]
    window = ratings[(ratings["rated_at"] >= pd.Timestamp(split)) & ratings["user_id"].isin(before["user_id"].unique())]
    positives = window.loc[window["rating"] >= POSITIVE_MIN_RATING, ["user_id", "movie_id"]]
    users = np.sort(positives["user_id"].unique())
    seen = {int(u): set(m.tolist()) for u, m in before.groupby("user_id")["movie_id"]}
    m = ranking_metrics(score_top_k(fit_popularity(before, split), users, seen, 10), positives, len(store.movies()), 10)
    return {"validation_from": split.isoformat(), "users": int(len(users)),
            **{k: m[k] for k in ("ndcg_at_10", "recall_at_10", "hit_rate_at_10")}}


def main(argv=None) -> int:
    from recpipe import pipeline, registry, runs
    from recpipe.cli import parse_duration, parse_time
    from recpipe.config import Settings
    from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--variants", help="JSON object: name -> gru4rec overrides")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cutoff", help="train before this date and judge the window after it (default: the"
                    " protocol's T, 2000-12-01); an earlier cutoff with a short window is a validation no"
                    " variant trained on, e.g. --cutoff 2000-11-01 --window 30d")
    ap.add_argument("--window", help="the judged window after the cutoff (default 365d)")
    ap.add_argument("--by-serving", metavar="VARIANT", action="append", default=[],
                    help="add the test figures of VARIANT's run (already in --out) served every way")
    ap.add_argument("--validation-popularity", action="store_true",
                    help="add popularity's figures on the serving-choice validation window to --out")
    args = ap.parse_args(argv)
    if args.by_serving or args.validation_popularity:
        out = json.loads(Path(args.out).read_text())
        if args.validation_popularity:
            out["validation_popularity"] = validation_popularity(Settings.from_env())
            print(out["validation_popularity"])
        for name in args.by_serving:
            v = out["variants"][name]
            v["test_by_serving_not_used_for_choosing"] = test_by_serving(Settings.from_env(), v["run_id"],
                                                                         v["serving"]["candidates"])
        out.setdefault("commands", [out.get("command")]).append(
            "python bench/gru4rec_variants.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
        return 0
    variants = json.loads(args.variants)
    settings = Settings.from_env()
    cutoff = parse_time(args.cutoff) if args.cutoff else DEFAULT_CUTOFF
    window = parse_duration(args.window) if args.window else DEFAULT_WINDOW
    night = cutoff + window
    baselines = tuple(registry.baseline_names())
    plan0 = pipeline.make_plan(settings, night, eval_window=window, models=(*baselines, "gru4rec"),
                               epochs=args.epochs, dry_run=True)
    inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan0), pipeline.rebuild_sessions(settings, plan0))
    trained = {m: pipeline.train_model(settings, plan0, m, inputs)["run_id"] for m in baselines}
    seconds = {}
    for name, overrides in variants.items():
        plan = pipeline.make_plan(settings, night, eval_window=window, models=(*baselines, "gru4rec"),
                                  epochs=args.epochs, dry_run=True, model_overrides={"gru4rec": overrides})
        started = time.perf_counter()
        trained[name] = pipeline.train_model(settings, plan, "gru4rec", inputs)["run_id"]
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: run {trained[name]} trained in {seconds[name]} s", flush=True)
    evaluated = pipeline.evaluate(settings, plan0, list(trained.values()))["metrics"]
    engine = pipeline._engine(settings)
    out = {"protocol": "production", "cutoff": cutoff.isoformat(), "until": night.isoformat(),
           "epochs": args.epochs, "baselines": {}, "variants": {}}
    for name, run_id in trained.items():
        m = evaluated[str(run_id)]
        row = {"run_id": run_id, **{k: m.get(k) for k in METRICS}}
        if name in baselines:
            out["baselines"][name] = row
            continue
        run = runs.get(engine, run_id)
        cmd = (f"recpipe evaluate --protocol production --model gru4rec --epochs {args.epochs}"
               + (f" --cutoff {args.cutoff}" if args.cutoff else "") + (f" --window {args.window}" if args.window else "")
               + f" --overrides {shlex.quote(json.dumps(variants[name]))}")
        out["variants"][name] = {**row, "overrides": variants[name], "command": cmd,
                                 "train_and_choice_seconds": seconds[name],
                                 "loss": run.config.get("loss"), "sequences": run.config.get("sequences"),
                                 "serving": run.data_stats.get("serving")}
    out["command"] = "python bench/gru4rec_variants.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    for name, v in {**out["baselines"], **out["variants"]}.items():
        print(f"{name:<28}" + "".join(f"{k}={v[k]:.4f} " for k in METRICS[:4] if v.get(k) is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
