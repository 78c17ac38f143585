"""Training and scoring throughput of both models, and the machine's fp32 matmul limit.

Measured in one run, so each figure can be read as a fraction of the machine:
- matmul: fp32 GFLOP/s of an n x n matrix product, through numpy and through the
  Keras backend (TensorFlow here; `KERAS_BACKEND=jax` on a GPU machine);
- AutoInt+ training samples/s over a whole `fit` (validation included) at seed 000's
  tuned config, on seed 000's 80 % train split of ML-1M;
- GRU4Rec training events/s over a whole fit at seed 002's config (batch 128,
  hidden 64) on the seed's split;
- AutoInt+ scoring pairs/s (users x unseen movies) and GRU4Rec scoring users/s.

No figure here is compared with the seeds: a seed rate typed in from another day and
another machine says nothing about this run. `bench/seed_compare.py` runs the seed
notebooks' loops beside these models, in one process on the same data, and reports
the ratios (bench/results/seed_compare.json).

    python bench/train.py [--autoint-epochs 10] [--gru4rec-epochs 3] [--score-users 600]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import matmul_gflops, peak_rss_mib, source_dir, write_result


def autoint_figures(folder, epochs: int, score_users: int) -> dict:
    from recpipe.evaluation.seed000 import seed000_split
    from recpipe.features import FieldEncoders
    from recpipe.models.autoint import SEED000_CONFIG, fit_autoint
    from recpipe.recommenders.autoint import score_catalogue as score_top_k
    from recpipe.source import load_ml1m_frames

    ratings, movies, users = load_ml1m_frames(folder)
    train, _ = seed000_split(ratings, movies, users)
    encoders = FieldEncoders().fit(train)
    X, y = encoders.transform(train), train["label"].to_numpy(np.float32)
    config = SEED000_CONFIG.with_(epochs=epochs, patience=epochs)
    model, history = fit_autoint(X, y, encoders.field_dims, config, verbose=0)
    seen = {int(u): set(m.tolist()) for u, m in ratings.groupby("user_id")["movie_id"]}
    chosen = users.sample(n=min(score_users, len(users)), random_state=0)
    started = time.perf_counter()
    lists = score_top_k(model, encoders, chosen, movies, seen, ratings["rated_at"].max(), k=10)
    seconds = time.perf_counter() - started
    pairs = sum(len(movies) - len(seen.get(int(u), ())) for u in chosen["user_id"])
    return {
        "config": config.to_dict(),
        "train_rows": int(history["train_rows"]), "val_rows": int(history["val_rows"]),
        "epochs": int(history["epochs_run"]), "fit_seconds": history["fit_seconds"],
        "samples_per_s": history["samples_per_s"],
        "score_users": int(len(chosen)), "score_pairs": int(pairs), "score_seconds": seconds,
        "score_pairs_per_s": pairs / seconds, "lists_rows": int(len(lists)),
    }


def gru4rec_figures(folder, epochs: int) -> dict:
    from recpipe.models.gru4rec import SEED002_CONFIG, fit_gru4rec
    from recpipe.recommenders.gru4rec import score_top_k
    from recpipe.sessions import SEED002_PARAMS, make_session_sets
    from recpipe.source import load_ml1m_frames

    ratings, _, _ = load_ml1m_frames(folder)
    sets = make_session_sets(ratings, SEED002_PARAMS, "evaluation")
    config = SEED002_CONFIG.__class__.from_dict({**SEED002_CONFIG.to_dict(), "epochs": epochs, "patience": 0})
    bundle, history = fit_gru4rec(sets["train"], config, verbose=0)
    histories = {int(u): g.tolist()[-50:] for u, g in ratings.sort_values(["user_id", "ts"]).groupby("user_id")["movie_id"]}
    seen = {u: set(h) for u, h in histories.items()}
    started = time.perf_counter()
    lists = score_top_k(bundle, histories, seen, k=10)
    seconds = time.perf_counter() - started
    return {
        "config": config.to_dict(),
        "train_events": int(len(sets["train"])), "train_steps": int(history["train_steps"]),
        "epochs": int(history["epochs_run"]), "train_seconds": history["train_seconds"],
        "events_per_s": history["events_per_s"],
        "score_users": len(histories), "score_seconds": seconds, "score_users_per_s": len(histories) / seconds,
        "lists_rows": int(len(lists)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoint-epochs", type=int, default=10)
    parser.add_argument("--gru4rec-epochs", type=int, default=3)
    parser.add_argument("--score-users", type=int, default=600)
    parser.add_argument("--only", choices=["matmul", "autoint", "gru4rec"])
    parser.add_argument("--name", default="train", help="result file name (e.g. train_gpu)")
    args = parser.parse_args()
    folder = source_dir()
    result = {"keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    if args.only in (None, "matmul"):
        result["matmul"] = matmul_gflops()
        print(f"matmul fp32: numpy {result['matmul']['numpy_gflops']:.0f} GFLOP/s,"
              f" keras/{result['matmul']['keras_backend']} {result['matmul']['keras_gflops']:.0f} GFLOP/s")
    if args.only in (None, "autoint"):
        a = result["autoint"] = autoint_figures(folder, args.autoint_epochs, args.score_users)
        print(f"AutoInt+ train: {a['samples_per_s']:,.0f} samples/s over {a['epochs']} epochs;"
              f" scoring {a['score_pairs_per_s']:,.0f} pairs/s")
    if args.only in (None, "gru4rec"):
        g = result["gru4rec"] = gru4rec_figures(folder, args.gru4rec_epochs)
        print(f"GRU4Rec train: {g['events_per_s']:,.0f} events/s over {g['epochs']} epochs;"
              f" scoring {g['score_users_per_s']:,.0f} users/s")
    result["peak_rss_mib"] = peak_rss_mib()
    print("for the seed ratios run bench/seed_compare.py (same process, same data)")
    write_result(args.name, result)


if __name__ == "__main__":
    main()
