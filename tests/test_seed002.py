"""Seed-002 protocol: rank metrics (ties against the model), every step of every
session scored, popularity baseline, and a small end-to-end run_seed002."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpipe.evaluation.seed002 import (
    evaluate_popularity,
    evaluate_sequences,
    mrr_at_k,
    next_item_ranks,
    recall_at_k,
    run_seed002,
)
from recpipe.models.gru4rec import GRU4RecConfig


def test_next_item_ranks_hand_computed_with_ties():
    scores = np.array([
        [0.1, 0.5, 0.3, 0.0],  # target 2 (0.3): only 0.5 above -> rank 2
        [0.2, 0.2, 0.2, 0.2],  # all tied: every other item counts against -> rank 4
        [1.0, 0.0, 2.0, 1.0],  # target 0 (1.0): 2.0 above, 1.0 tied -> rank 3
        [9.0, 1.0, 2.0, 3.0],  # target 0 is the strict best -> rank 1
    ])
    assert next_item_ranks(scores, [2, 1, 0, 0]).tolist() == [2, 4, 3, 1]
    assert next_item_ranks(np.array([0.3, 0.1]), [1]).tolist() == [2]  # one row as a vector
    assert next_item_ranks(np.zeros((0, 3)), []).tolist() == []


def test_next_item_ranks_nan_counts_against_model():
    scores = np.array([[np.nan, 0.5, 0.1], [0.5, np.nan, 0.1]])
    assert next_item_ranks(scores, [2, 1]).tolist() == [3, 3]


def test_recall_and_mrr_at_k_hand_computed():
    ranks = np.array([1, 2, 3, 21])
    assert recall_at_k(ranks, 2) == 0.5
    assert recall_at_k(ranks, 20) == 0.75
    assert mrr_at_k(ranks, 20) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert mrr_at_k(ranks, 1) == pytest.approx(0.25)
    assert np.isnan(recall_at_k([], 20)) and np.isnan(mrr_at_k([], 20))


def test_popularity_ranks_ties_against():
    pop = np.array([5.0, 5.0, 3.0, 1.0, 0.0])
    seqs = [np.array([4, 0, 1]), np.array([3, 2])]  # targets 0, 1, 2
    out = evaluate_popularity(pop, seqs, k=2)
    # ranks: item0 -> 2 (tied with item1), item1 -> 2, item2 -> 3
    assert out["n_steps"] == 3
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["mrr"] == pytest.approx((0.5 + 0.5 + 0) / 3)


class _FixedBundle:
    """Stand-in model: the score of item j after item i is 1 if j == i + 1 else 0,
    ties included; records the sequences it was asked about."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def sequence_logits(self, seqs, **_):
        self.calls.append([list(s) for s in seqs])
        out = []
        for s in seqs:
            lg = np.zeros((len(s), self.n))
            lg[np.arange(len(s)), (np.asarray(s) + 1) % self.n] = 1.0
            out.append(lg)
        return out


def test_evaluate_sequences_scores_every_step_of_every_session():
    model = _FixedBundle(5)
    seqs = [np.array([0, 1, 2, 3]), np.array([2, 3]), np.array([4]), np.array([1, 3, 4])]
    m = evaluate_sequences(model, seqs, k=1)
    # steps: 0->1,1->2,2->3 (hits), 2->3 (hit), 1->3 (miss: the target ties 4 others at 0 -> rank 5),
    # 3->4 (hit); the length-1 session has no step
    assert m["n_steps"] == 3 + 1 + 2
    assert m["recall"] == pytest.approx(5 / 6)
    # each session is run alone from its start (prefix without the last item)
    assert model.calls == [[[0, 1, 2], [2], [1, 3]]]


# --------------------------------------------------------------------- end to end
def _synthetic_ratings(n_users=50, n_items=100, days=800, seed=0):
    """Ratings over `days` days: each user has sessions (events 60 s apart) whose
    movies follow m -> m + 1 (mod n_items)."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = 946_684_800  # 2000-01-01
    for u in range(1, n_users + 1):
        for day in np.sort(rng.choice(days, size=12, replace=False)):
            start = int(rng.integers(n_items))
            ts = t0 + int(day) * 86_400 + 3_600 * int(rng.integers(0, 20))
            ts -= ts % 7_200  # inside one 2-hour bucket
            for j in range(int(rng.integers(3, 8))):
                rows.append((u, 1 + (start + j) % n_items, int(rng.integers(3, 6)), ts + 60 * j))
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    df = df.drop_duplicates(["user_id", "movie_id"]).reset_index(drop=True)
    df["line_no"] = np.arange(1, len(df) + 1)
    df["rated_at"] = pd.to_datetime(df["ts"], unit="s", utc=True)
    return df


def test_run_seed002_end_to_end_small():
    ratings = _synthetic_ratings()
    cfg = GRU4RecConfig(hidden=16, embedding_dim=16, dropout=0.0, learning_rate=0.02, batch_size=8,
                        bptt=8, epochs=4, patience=0)
    result = run_seed002(ratings, cfg, verbose=0)
    assert result["n_test_steps"] == result["n_test_steps_expected"] > 0
    assert result["epochs_run"] == 4 and result["train_events_per_s"] > 0
    g, p = result["gru4rec"], result["popularity"]
    assert 0 <= p["recall@20"] <= 1 and 0 <= g["mrr@20"] <= g["recall@20"] <= 1
    assert g["mrr@20"] > p["mrr@20"]  # the sequence is learnable, popularity is flat
