"""Why GRU4Rec trails popularity on the production protocol: facts about the test users
and ways of turning one trained GRU4Rec run's scores into lists, each on the serving
choice's 30-day validation window and on the test year (ML-1M, T = 2000-12-01).

Facts: the gap between a test user's last rating before T and first after it; the share of
test positives that are new movies; the share of training transitions with a gap over a
day; popularity's NDCG@10 for several counting windows.

Scorings (L = last L liked movies, as the product serves): the plain log-softmax at the
last position; the mean of the distributions at the last M positions; a prior shift
(+ lam * (log recent popularity - log training popularity)); a mixture with popularity
((1 - a) * p_GRU + a * p_popularity). For the record only: none is chosen here.

    RECPIPE_DATABASE_URL=<ML-1M ingested> python bench/gru4rec_serving_checks.py --run-id N \
        --out eval/production_gru4rec_serving_checks.json
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

# (L, last positions averaged, prior shift lam, popularity mixture a)
SCORINGS = [(10, 1, 0, 0), (50, 1, 0, 0), (200, 1, 0, 0), (200, 10, 0, 0), (200, 50, 0, 0),
            (10, 1, 0.5, 0), (10, 1, 1.0, 0), (10, 1, 0, 0.1), (10, 1, 0, 0.3), (10, 1, 0, 0.5)]


def main(argv=None) -> int:
    from recpipe import pipeline, runs
    from recpipe.config import Settings
    from recpipe.evaluation.metrics import ranking_metrics
    from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW, holdout
    from recpipe.models.popularity import fit_popularity, score_top_k as popularity_top_k
    from recpipe.models.topk import exclusions, top_k
    from recpipe.recommenders.base import Store
    from recpipe.recommenders.gru4rec import recent_histories, validation_window
    from recpipe.scoring import LoadedRun

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-id", type=int, required=True, help="a GRU4Rec run trained with cutoff T")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    settings = Settings.from_env()
    store = Store(pipeline._engine(settings), settings)
    run = runs.get(store.engine, args.run_id)
    net = LoadedRun(store, run).model[0]
    n_items = net.n_items
    cutoff = pd.Timestamp(DEFAULT_CUTOFF)
    train_until = pd.Timestamp(run.data_stats["train_until"])

    ratings = store.ratings(before=DEFAULT_CUTOFF)
    test = holdout(store, DEFAULT_CUTOFF, DEFAULT_CUTOFF + DEFAULT_WINDOW)
    test_pos = test[test["label"] == 1][["user_id", "movie_id"]]
    before, val_pos, _, split = validation_window(store.ratings(before=train_until), 30, train_until)
    tasks = {"validation": (before, val_pos, split), "test": (ratings, test_pos, cutoff)}

    users = np.sort(test_pos["user_id"].unique())
    last = ratings[ratings["user_id"].isin(users)].groupby("user_id")["rated_at"].max()
    first_after = test.groupby("user_id")["rated_at"].min()
    gap_days = ((first_after - last).dropna().dt.total_seconds() / 86400).quantile([.1, .25, .5, .75, .9])
    first_seen = ratings.groupby("movie_id")["rated_at"].min()
    seen_at = test_pos["movie_id"].map(first_seen)
    steps = ratings.sort_values(["user_id", "ts", "line_no"]).groupby("user_id")["rated_at"].diff().dropna()
    seen = {int(u): set(m.tolist()) for u, m in ratings[ratings["user_id"].isin(users)].groupby("user_id")["movie_id"]}
    popularity_windows = {}
    for days in (30, 90, 365, 2000):
        model = fit_popularity(ratings, DEFAULT_CUTOFF, window=timedelta(days=days))
        lists = popularity_top_k(model, users, seen, 10)
        popularity_windows[days] = round(ranking_metrics(lists, test_pos, n_items, 10)["ndcg_at_10"], 4)
    facts = {
        "return_gap_days_quantiles_10_25_50_75_90": [round(x, 1) for x in gap_days.tolist()],
        "test_positives_first_seen_within_90_days_before_T": round(float((seen_at >= cutoff - timedelta(days=90)).mean()), 4),
        "training_transitions_over_one_day": round(float((steps > pd.Timedelta(days=1)).mean()), 4),
        "popularity_ndcg_at_10_by_window_days": popularity_windows,
    }
    print(facts, flush=True)

    def log_popularity(frame, days=None, as_of=None):
        if days is not None:
            frame = frame[frame["rated_at"] >= as_of - timedelta(days=days)]
        idx = net.index.encode(frame["movie_id"].to_numpy())
        counts = np.bincount(idx[idx >= 0], minlength=n_items) + 1.0
        return np.log(counts / counts.sum())

    train_prior = log_popularity(store.ratings(before=train_until).query("rating >= 3"))

    def ndcg(history, positives, as_of, length, last_m, lam, mix):
        who = np.sort(positives["user_id"].unique())
        histories = recent_histories(history, who, length, 3, net.index)
        who = [u for u in who if u in histories]
        seqs = [net.index.encode(histories[u]).astype(np.int32) for u in who]
        outputs = net.sequence_logits(seqs, last_only=last_m == 1)
        scores = np.empty((len(who), n_items))
        for i, out in enumerate(outputs):
            logits = np.atleast_2d(out.astype(np.float64))[-last_m:]
            log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            scores[i] = np.log(np.exp(log_p).mean(axis=0))
        recent = log_popularity(history, 90, as_of)
        if lam:
            scores += lam * (recent - train_prior)
        if mix:
            scores = np.logaddexp(np.log1p(-mix) + scores, np.log(mix) + recent)
        excluded = exclusions(net.index.encode, [sorted(g) for _, g in
                                                 history[history["user_id"].isin(who)].groupby("user_id")["movie_id"]],
                              n_items)
        r, rank, items, _ = top_k(scores, 10, excluded)
        lists = pd.DataFrame({"user_id": np.asarray(who)[r], "rank": rank, "movie_id": net.index.decode(items)})
        return round(ranking_metrics(lists, positives, n_items, 10)["ndcg_at_10"], 4)

    rows = []
    for length, last_m, lam, mix in SCORINGS:
        row = {"history_length": length, "last_positions_averaged": last_m, "prior_shift": lam,
               "popularity_mixture": mix, **{name: ndcg(h, pos, t, length, last_m, lam, mix)
                                              for name, (h, pos, t) in tasks.items()}}
        rows.append(row)
        print(row, flush=True)
    args.out.write_text(json.dumps({"run_id": args.run_id, "config": run.config, "facts": facts,
                                    "scorings_ndcg_at_10": rows,
                                    "command": "python bench/gru4rec_serving_checks.py " + " ".join(argv or sys.argv[1:])},
                                   indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
