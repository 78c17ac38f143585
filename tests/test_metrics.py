"""Production-protocol metrics and the popularity baseline against hand-computed cases."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from recpipe.evaluation.metrics import ranking_metrics, user_ranking_metrics
from recpipe.models.popularity import Popularity, fit_popularity, score_top_k

UTC = timezone.utc


def test_user_metrics_by_hand():
    # Hits at ranks 1 and 3 of 3 positives: DCG = 1 + 1/log2(4) = 1.5;
    # ideal over min(3, 10) = 3 slots: 1 + 1/log2(3) + 1/2.
    m = user_ranking_metrics([10, 20, 30, 40], {10, 30, 99}, k=10)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["ndcg"] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))
    assert m["hit_rate"] == 1.0


def test_ideal_dcg_is_capped_at_k():
    # 12 positives, all 10 slots hit: NDCG is exactly 1 (ideal over 10 slots, not 12).
    positives = set(range(12))
    m = user_ranking_metrics(list(range(10)), positives, k=10)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(10 / 12)


def test_items_past_k_do_not_count():
    m = user_ranking_metrics(list(range(1, 12)) + [0], {0, 11}, k=10)
    assert m == {"recall": 0.0, "ndcg": 0.0, "hit_rate": 0.0}


def test_ranking_metrics_means_users_and_scores_missing_lists_zero():
    recs = pd.DataFrame({"user_id": [1, 1, 2, 2], "rank": [1, 2, 1, 2], "movie_id": [5, 6, 7, 8]})
    positives = pd.DataFrame({"user_id": [1, 2, 3], "movie_id": [6, 9, 5]})
    out = ranking_metrics(recs, positives, catalogue_size=10, k=10)
    assert out["users"] == 3
    assert out["recall_at_10"] == pytest.approx((1 + 0 + 0) / 3)
    assert out["ndcg_at_10"] == pytest.approx((1 / math.log2(3)) / 3)
    assert out["hit_rate_at_10"] == pytest.approx(1 / 3)
    assert out["coverage_at_10"] == pytest.approx(4 / 10)


def test_popularity_counts_recent_positives_and_skips_seen():
    t0 = datetime(2001, 1, 1, tzinfo=UTC)
    rows = [  # movie 1: 3 recent positives; movie 2: 2 recent; movie 3: 5 old ones; movie 4: recent but rating 3
        *[(u, 1, 5, t0 - timedelta(days=1)) for u in range(3)],
        *[(u, 2, 4, t0 - timedelta(days=2)) for u in range(2)],
        *[(u, 3, 5, t0 - timedelta(days=400)) for u in range(5)],
        *[(u, 4, 3, t0 - timedelta(days=1)) for u in range(9)],
        (9, 5, 5, t0 + timedelta(days=1)),  # after as_of: ignored
    ]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "rated_at"])
    model = fit_popularity(ratings, t0, timedelta(days=90))
    assert model.movie_ids.tolist()[:3] == [1, 2, 3]  # old positives rank after the window's
    assert 5 not in model.movie_ids.tolist()
    lists = score_top_k(model, [0, 42], {0: {1}}, k=2)
    assert lists[lists.user_id == 0].movie_id.tolist() == [2, 3]
    assert lists[lists.user_id == 42].movie_id.tolist() == [1, 2]
    assert lists["rank"].tolist() == [1, 2, 1, 2]
    assert Popularity.from_json(model.to_json()).movie_ids.tolist() == model.movie_ids.tolist()
