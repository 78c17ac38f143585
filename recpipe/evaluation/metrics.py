"""Top-k ranking metrics of the production protocol, one value per user, then means.

recall@k = hits in the top k / number of the user's test positives;
NDCG@k uses log2 discounts and an ideal DCG over min(#positives, k) slots;
hit rate@k = 1 when at least one positive is in the top k;
coverage@k = distinct items in all users' top-k lists / catalogue size.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

K = 10


def user_ranking_metrics(ranked: list[int] | np.ndarray, positives: set[int], k: int = K) -> dict[str, float]:
    """Metrics of one user's ranked list against that user's positives."""
    top = list(ranked)[:k]
    if not positives:
        raise ValueError("a user without test positives has no ranking metrics")
    gains = np.array([1.0 if item in positives else 0.0 for item in top])
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(len(positives), k) + 2))).sum()
    hits = gains.sum()
    return {
        "recall": hits / len(positives),
        "ndcg": float((gains * discounts).sum() / ideal),
        "hit_rate": float(hits > 0),
    }


def ranking_metrics(recommendations: pd.DataFrame, positives: pd.DataFrame, catalogue_size: int,
                    k: int = K) -> dict[str, float]:
    """Mean metrics over the users of `positives` (user_id, movie_id).

    recommendations: user_id, rank, movie_id. A user of `positives` with no list scores 0.
    """
    lists = (
        recommendations[recommendations["rank"] <= k]
        .sort_values(["user_id", "rank"])
        .groupby("user_id")["movie_id"].agg(list)
    )
    wanted = positives.groupby("user_id")["movie_id"].agg(set)
    per_user = [user_ranking_metrics(lists.get(user, []), items, k) for user, items in wanted.items()]
    shown = recommendations.loc[
        recommendations["user_id"].isin(wanted.index) & (recommendations["rank"] <= k), "movie_id"
    ].nunique()
    if not per_user:
        return {f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), f"hit_rate_at_{k}": float("nan"),
                f"coverage_at_{k}": 0.0, "users": 0}
    return {
        f"recall_at_{k}": float(np.mean([m["recall"] for m in per_user])),
        f"ndcg_at_{k}": float(np.mean([m["ndcg"] for m in per_user])),
        f"hit_rate_at_{k}": float(np.mean([m["hit_rate"] for m in per_user])),
        f"coverage_at_{k}": shown / catalogue_size if catalogue_size else 0.0,
        "users": len(per_user),
    }
