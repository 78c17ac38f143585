"""Seed 000's protocol metrics against hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from recpipe.evaluation.seed000 import (
    seed000_hitrate,
    seed000_ndcg,
    seed000_ranking_metrics,
    seed000_ranklists,
    seed000_split,
)


def ln_gain(i):
    return 1.0 / math.log(i + 2)


def test_ndcg_natural_log_and_uncapped_idcg():
    # hits at ranks 1 and 3 of the list; 3 positives in all
    dcg = ln_gain(0) + ln_gain(2)
    idcg = ln_gain(0) + ln_gain(1) + ln_gain(2)
    assert seed000_ndcg([10, 20, 30, 40], {10, 30, 99}) == round(dcg / idcg, 5)
    # natural log, not log2: a single hit at rank 2 of 1 positive is 1/ln(3) / (1/ln(2))
    assert seed000_ndcg([5, 7], [7]) == round(math.log(2) / math.log(3), 5)
    assert seed000_ndcg([1, 2], []) == 0.0
    assert seed000_ndcg([], [1]) == 0.0


def test_more_positives_than_top10_cannot_reach_one():
    positives = list(range(15))
    ranklist = list(range(10))  # all 10 are positives
    dcg = sum(ln_gain(i) for i in range(10))
    idcg = sum(ln_gain(i) for i in range(15))  # uncapped: over all 15 positives
    assert seed000_ndcg(ranklist, positives) == round(dcg / idcg, 5)
    assert seed000_ndcg(ranklist, positives) < 1.0
    assert seed000_hitrate(ranklist, positives) == round(10 / 15, 5)


def test_hitrate_is_recall():
    assert seed000_hitrate([1, 2, 3], {2, 3, 4, 5}) == 0.5
    assert seed000_hitrate([1, 2, 3], {9}) == 0.0
    assert seed000_hitrate([1, 2, 3], [1, 1, 2]) == 1.0  # positives are a set, like the seed's
    assert seed000_hitrate([1], [1, 2, 3]) == round(1 / 3, 5)


def test_ranklists_sort_cut_then_dedupe_and_stable_ties():
    users = [1] * 12 + [2] * 3
    movies = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 100] + [7, 8, 9]
    scores = [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.05, 0.95] + [0.5, 0.5, 0.6]
    lists = seed000_ranklists(users, movies, scores, top=10)
    # movie 100 appears twice (0.95 and 0.1): the cut keeps the 10 best rows, then dedupe
    assert lists[1] == [100, 101, 102, 103, 104, 105, 106, 107, 108, 109]
    assert lists[2] == [9, 7, 8]  # tie 7/8 keeps input order
    dup = seed000_ranklists([1, 1, 1], [5, 5, 6], [0.9, 0.8, 0.1], top=2)
    assert dup[1] == [5]  # the dedupe happens after the cut: fewer than `top` left


def test_ranking_metrics_means_over_users_with_positives():
    # user 1: 3 rows, positives {11, 13}; user 2: no positive (not evaluated);
    # user 3: one positive ranked second
    users = [1, 1, 1, 2, 2, 3, 3]
    movies = [11, 12, 13, 21, 22, 31, 32]
    labels = [1, 0, 1, 0, 0, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.5, 0.4, 0.6, 0.3]
    m = seed000_ranking_metrics(users, movies, labels, scores, top=2)
    u1_ndcg = round(ln_gain(0) / (ln_gain(0) + ln_gain(1)), 5)  # top2 = [11, 12]
    u3_ndcg = round(ln_gain(1) / ln_gain(0), 5)
    assert m["users_evaluated"] == 2
    assert m["seed000_ndcg"] == round((u1_ndcg + u3_ndcg) / 2, 5)
    assert m["seed000_hitrate"] == round((0.5 + 1.0) / 2, 5)


def test_split_is_sklearns_random_split_in_file_order():
    from sklearn.model_selection import train_test_split

    n = 50
    rng = np.random.default_rng(0)
    ratings = pd.DataFrame({
        "user_id": rng.integers(1, 6, n), "movie_id": rng.integers(1, 8, n), "rating": rng.integers(1, 6, n),
        "ts": 978_300_000 + np.arange(n), "line_no": np.arange(1, n + 1),
    })
    ratings["rated_at"] = pd.to_datetime(ratings["ts"], unit="s", utc=True)
    movies = pd.DataFrame({"movie_id": range(1, 8), "title": [f"m ({1990 + i})" for i in range(7)],
                           "year": pd.array([1990 + i for i in range(7)], dtype="Int64"),
                           "genres": [["Drama"], ["Comedy", "Drama"]] * 3 + [["Action"]]})
    users = pd.DataFrame({"user_id": range(1, 6), "gender": list("MFMFM"), "age": [1, 18, 25, 35, 45],
                          "occupation": [0, 1, 2, 3, 4], "zip": ["1", "2", "3", "4", "5"]})
    shuffled = ratings.sample(frac=1, random_state=1)  # input order must not matter: line_no does
    train, test = seed000_split(shuffled, movies, users)
    idx_train, idx_test = train_test_split(np.arange(n), test_size=0.2, random_state=42)
    assert list(train.index) == list(idx_train) and list(test.index) == list(idx_test)
    assert test["user_id"].tolist() == ratings["user_id"].iloc[idx_test].astype(str).tolist()
