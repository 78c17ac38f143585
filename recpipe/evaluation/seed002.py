"""Seed 002's evaluation protocol for GRU4Rec, done right.

Split: ratings >= 3, 2-hour clock buckets per user (the setting that reproduces the
seed's printed counts), sessions < 3 events and movies < 10 events dropped until
stable, then by each session's last event: last 200 days test, 200 days before
validation, rest train (recpipe.sessions).

Metric: at EVERY step of EVERY test session (no session dropped), the hidden state
starting from zero at the session's first event, the model scores all training items
for the next event; rank = 1 + number of OTHER items whose score is >= the target's
(ties count against the model). Recall@20 = share of steps with rank <= 20,
MRR@20 = mean of 1/rank over steps (0 when rank > 20). Popularity (train counts) is
scored the same way as a sanity baseline.

    python -m recpipe.evaluation.seed002 --source-dir /work/shared/data/ml-1m \
        --config seed|default --out eval/seed002_gru4rec.json

Bar (issue #4): Recall@20 >= 0.1925 and MRR@20 >= 0.0552 on the test split. What
limits the figures: MovieLens ratings are not consumption sequences (people rate
batches of films they saw long ago, often many within the same second, whose order is
arbitrary and only fixed here by file line), so the next rated movie is weakly
predictable; the test split is small (462 sessions, 6,726 scored steps: +-0.005 on
Recall@20 is noise), dominated by a few long sessions, and the validation split
(698 sessions) used for early stopping and for choosing DEFAULT_CONFIG is as small.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

K = 20


# ----------------------------------------------------------------------- metrics
def next_item_ranks(scores, targets) -> np.ndarray:
    """Rank of each step's target among all items: 1 + number of other items whose
    score is >= the target's score (ties against the model). scores [n, items],
    targets [n] item indices. A NaN target score gets the worst rank."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if len(targets) == 0:
        return np.zeros(0, dtype=np.int64)
    target_scores = scores[np.arange(len(targets)), targets]
    ge = (scores >= target_scores[:, None]).sum(axis=1)  # includes the target itself
    nan_scores = np.isnan(scores).sum(axis=1)
    ranks = ge + nan_scores  # NaN scores of other items count against the model too
    ranks[np.isnan(target_scores)] = scores.shape[1]
    return ranks.astype(np.int64)


def recall_at_k(ranks, k: int = K) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def mrr_at_k(ranks, k: int = K) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return float("nan")
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0)))


def _log_softmax_target(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
    return logits[np.arange(len(targets)), targets] - lse


def evaluate_sequences(bundle, sequences, k: int = K) -> dict:
    """Recall@k, MRR@k and mean cross-entropy of a GRU4Rec bundle over every step of
    every item-index sequence (state from zero at each sequence start)."""
    seqs = [np.asarray(s) for s in sequences if len(s) >= 2]
    if not seqs:
        return {"recall": float("nan"), "mrr": float("nan"), "loss": float("nan"), "n_steps": 0}
    all_ranks, losses = [], []
    logits = bundle.sequence_logits([s[:-1] for s in seqs])
    for s, lg in zip(seqs, logits):
        all_ranks.append(next_item_ranks(lg, s[1:]))
        losses.append(-_log_softmax_target(lg.astype(np.float64), s[1:]))
    ranks = np.concatenate(all_ranks)
    return {"recall": recall_at_k(ranks, k), "mrr": mrr_at_k(ranks, k),
            "loss": float(np.concatenate(losses).mean()), "n_steps": int(len(ranks))}


def sequence_validator(val_events: pd.DataFrame, k: int = K):
    """fit_gru4rec's `validate`: Recall@k, MRR@k and cross-entropy over every step of
    the validation sessions (items unknown to the model dropped)."""
    from recpipe.models.gru4rec import session_sequences

    cache: dict = {}

    def validate(bundle) -> dict:
        if cache.get("index") is not bundle.index:
            cache.update(index=bundle.index, seqs=session_sequences(val_events, bundle.index))
        m = evaluate_sequences(bundle, cache["seqs"], k=k)
        return {f"val_recall@{k}": m["recall"], f"val_mrr@{k}": m["mrr"], "val_loss": m["loss"]}

    return validate


def popularity_scores(train_events: pd.DataFrame, index) -> np.ndarray:
    counts = train_events["movie_id"].value_counts()
    return counts.reindex(index.movie_ids).fillna(0).to_numpy(dtype=np.float64)


def evaluate_popularity(scores: np.ndarray, sequences, k: int = K) -> dict:
    targets = np.concatenate([np.asarray(s[1:]) for s in sequences if len(s) >= 2] or [np.zeros(0, int)])
    # one score row for all steps: rank = 1 + items (other than the target) with count >= target's
    order = np.sort(scores)
    ge = len(scores) - np.searchsorted(order, scores[targets], side="left")
    ranks = ge.astype(np.int64)
    return {"recall": recall_at_k(ranks, k), "mrr": mrr_at_k(ranks, k), "n_steps": int(len(ranks))}


# ------------------------------------------------------------------------- runner
def seed_split(ratings: pd.DataFrame):
    from recpipe.sessions import filter_sessions, sessionize, split_by_last_event

    events = sessionize(ratings, mode="bucket", bucket=timedelta(hours=2))
    events = filter_sessions(events, min_rating=3, min_session_length=3, min_item_support=10)
    return split_by_last_event(events, test_days=200, val_days=200)


def _stats(frame: pd.DataFrame) -> dict:
    return {"events": int(len(frame)), "sessions": int(frame["session_id"].nunique()),
            "items": int(frame["movie_id"].nunique())}


def run_seed002(ratings: pd.DataFrame, config=None, *, out_dir=None, verbose: int = 1,
                split=None, return_bundle: bool = False):
    """Seed split -> train GRU4Rec (early stopping on validation) -> test metrics dict
    ((dict, bundle) when return_bundle)."""
    from recpipe.models.gru4rec import DEFAULT_CONFIG, fit_gru4rec, session_sequences

    config = config or DEFAULT_CONFIG
    split = split if split is not None else seed_split(ratings)
    bundle, history = fit_gru4rec(split.train, config, validate=sequence_validator(split.validation),
                                  out_dir=out_dir, verbose=verbose)
    test_seqs = session_sequences(split.test, bundle.index)
    n_test_sessions = int(split.test["session_id"].nunique())
    t0 = time.perf_counter()
    gru = evaluate_sequences(bundle, test_seqs)
    eval_s = time.perf_counter() - t0
    pop = evaluate_popularity(popularity_scores(split.train, bundle.index), test_seqs)
    val = evaluate_sequences(bundle, session_sequences(split.validation, bundle.index))
    result = {
        "protocol": "seed002: 2-hour buckets, ratings>=3, sessions>=3, items>=10, "
                    "200/200 days by last event; every step of every test session, "
                    "state from zero per session, all train items ranked, ties against the model",
        "split": {"train": _stats(split.train), "validation": _stats(split.validation),
                  "test": _stats(split.test)},
        "config": config.to_dict(),
        "gru4rec": {f"recall@{K}": gru["recall"], f"mrr@{K}": gru["mrr"],
                    "test_cross_entropy": gru["loss"]},
        "gru4rec_validation": {f"recall@{K}": val["recall"], f"mrr@{K}": val["mrr"]},
        "popularity": {f"recall@{K}": pop["recall"], f"mrr@{K}": pop["mrr"]},
        "n_test_steps": gru["n_steps"],
        "n_test_steps_expected": int(len(split.test) - n_test_sessions),
        "n_test_sessions": n_test_sessions,
        "n_items": len(bundle.index),
        "train_steps_per_epoch": history["train_steps"],
        "train_events_per_s": history["events_per_s"],
        "train_seconds": history["train_seconds"],
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "test_eval_seconds": eval_s,
        "history": {k: v for k, v in history.items() if isinstance(v, list)},
        "bar_issue4": {f"recall@{K}": 0.1925, f"mrr@{K}": 0.0552},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    result["meets_bar"] = bool(gru["recall"] >= 0.1925 and gru["mrr"] >= 0.0552)
    return (result, bundle) if return_bundle else result


def main(argv=None) -> int:
    from recpipe.models.gru4rec import DEFAULT_CONFIG, SEED002_CONFIG, GRU4RecConfig
    from recpipe.source import load_ml1m_frames

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source-dir", type=Path, required=True)
    p.add_argument("--config", default="default",
                   help="seed | default | path to a JSON GRU4RecConfig")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (JSON value), repeatable")
    p.add_argument("--out", type=Path, default=Path("eval/seed002_gru4rec.json"))
    p.add_argument("--out-dir", type=Path, default=None, help="training curve + model here")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
    if args.config == "seed":
        cfg = SEED002_CONFIG
    elif args.config == "default":
        cfg = DEFAULT_CONFIG
    else:
        cfg = GRU4RecConfig.from_dict(json.loads(Path(args.config).read_text()))
    d = cfg.to_dict()
    for item in args.set:
        key, _, value = item.partition("=")
        d[key] = json.loads(value)
    cfg = GRU4RecConfig.from_dict(d)
    ratings, _, _ = load_ml1m_frames(args.source_dir)
    result, bundle = run_seed002(ratings, cfg, out_dir=args.out_dir, verbose=args.verbose,
                                 return_bundle=True)
    result["config_name"] = args.config
    if args.out_dir is not None:
        bundle.save(args.out_dir / "model")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = {}
    if args.out.exists():
        try:
            existing = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            existing = {}
    if not isinstance(existing, dict) or "runs" not in existing:
        existing = {"runs": {}}
    existing["runs"][args.config if not args.set else f"{args.config}+{','.join(args.set)}"] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    g, pop = result["gru4rec"], result["popularity"]
    print(f"GRU4Rec ({args.config}): Recall@20={g['recall@20']:.4f} MRR@20={g['mrr@20']:.4f} "
          f"| popularity Recall@20={pop['recall@20']:.4f} MRR@20={pop['mrr@20']:.4f} "
          f"| {result['n_test_steps']} test steps, {result['train_events_per_s']:.0f} train events/s, "
          f"{result['epochs_run']} epochs (best {result['best_epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
