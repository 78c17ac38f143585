"""The shared chunked top-k against a brute-force reference, ties and edge rows included,
and the vectorised popularity lists against the per-user walk they replace."""
from datetime import datetime, timedelta
from itertools import islice

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recpipe.models.ease import EASEModel, EASEConfig, top_k_frame
from recpipe.models.popularity import Popularity, score_top_k as popularity_top_k
from recpipe.models.topk import chunked_top_k, exclusion_matrix, flatten, top_k


def reference(scores, excluded, k):
    """Per row: finite, not excluded items by score desc, then item index asc; first k."""
    out = []
    for r, row in enumerate(scores):
        items = [i for i in range(len(row)) if np.isfinite(row[i]) and i not in excluded[r]]
        items.sort(key=lambda i: (-row[i], i))
        out += [(r, rank, i, float(row[i])) for rank, i in enumerate(items[:k], start=1)]
    return out


def as_tuples(result):
    rows, rank, items, values = result
    return list(zip(rows.tolist(), rank.tolist(), items.tolist(), values.tolist()))


def random_case(rng, n, m):
    # few distinct values: many ties, also at the k-th place
    scores = rng.integers(0, 4, size=(n, m)).astype(np.float64)
    scores[rng.random((n, m)) < 0.05] = np.nan
    scores[rng.random((n, m)) < 0.02] = -np.inf
    excluded = [set(rng.choice(m, size=rng.integers(0, m + 1), replace=False).tolist()) for _ in range(n)]
    excluded[0] = set(range(m))  # everything excluded: no row at all
    excluded[1] = set()
    return scores, excluded


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_top_k_matches_brute_force_with_ties(seed, k):
    rng = np.random.default_rng(seed)
    n, m = 13, int(rng.integers(1, 30))  # k > items too
    scores, excluded = random_case(rng, n, m)
    rows, items = flatten([sorted(e) for e in excluded])
    mask = exclusion_matrix(rows, items, (n, m))
    before = scores.copy()
    assert as_tuples(top_k(scores, k, mask)) == reference(scores, excluded, k)
    np.testing.assert_array_equal(scores, before)  # the caller's scores are left alone
    chunked = chunked_top_k(lambda lo, hi: scores[lo:hi], n, k, mask, chunk_size=4)
    assert as_tuples(chunked) == reference(scores, excluded, k)


def test_top_k_edges():
    empty = top_k(np.zeros((3, 0)), 5)
    assert all(len(a) == 0 for a in empty)
    assert all(len(a) == 0 for a in top_k(np.ones((2, 4)), 0))
    rows, rank, items, values = top_k(np.array([[1.0, 2.0, 2.0]]), 10)
    assert items.tolist() == [1, 2, 0] and rank.tolist() == [1, 2, 3]
    assert all(len(a) == 0 for a in chunked_top_k(lambda lo, hi: np.zeros((hi - lo, 3)), 0, 5))


def test_top_k_frame_users_and_movie_ids():
    movie_ids = np.array([10, 20, 30, 40])
    weights = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], np.float32)
    model = EASEModel(weights, movie_ids, EASEConfig())
    top = top_k_frame(model.scores, movie_ids, {7: [10], 3: [20, 99], 5: []}, {7: [10, 30]}, 2, chunk_size=2)
    # user 7: 20 scores 1, 30 excluded; ties by movie id. User 3 excludes nothing (exclude given).
    assert top.values.tolist() == [[7, 1, 20, 1.0], [7, 2, 40, 0.0], [3, 1, 10, 1.0], [3, 2, 40, 1.0],
                                   [5, 1, 10, 0.0], [5, 2, 20, 0.0]]
    assert list(top.dtypes) == [np.int64, np.int64, np.int64, np.float64]


def walk(model, user_ids, seen, k):
    """The per-user walk down the ranking that the vectorised lists replace."""
    ranked = list(zip(model.movie_ids.tolist(), model.counts.tolist()))
    rows = []
    for user in user_ids:
        taken = seen.get(int(user), set())
        picked = list(islice((mc for mc in ranked if mc[0] not in taken), k))
        rows.extend((int(user), rank, int(m), float(c)) for rank, (m, c) in enumerate(picked, start=1))
    return rows


@pytest.mark.parametrize("k", [0, 1, 10, 40])
def test_popularity_matches_the_walk(k):
    rng = np.random.default_rng(k)
    movies = rng.permutation(np.arange(1, 31))
    model = Popularity(datetime(2000, 1, 1), timedelta(days=90), movies.astype(np.int64),
                       np.sort(rng.integers(0, 9, size=30))[::-1].astype(np.int64))
    seen = {u: set(rng.choice(np.arange(1, 40), size=rng.integers(0, 35), replace=False).tolist())
            for u in range(1, 20)}
    seen[2] = set(range(1, 31))  # saw everything ranked: no list
    users = [5, 2, 3, 99, 5, 1]  # 99 saw nothing; a repeated user gets its list twice, as before
    got = popularity_top_k(model, users, seen, k)
    assert list(map(tuple, got.itertuples(index=False))) == walk(model, users, seen, k)
    if len(got):
        assert list(got.dtypes) == [np.int64, np.int64, np.int64, np.float64]


def test_exclusion_matrix_drops_unknown():
    mask = exclusion_matrix(np.array([0, 0, 1]), np.array([2, -1, 0]), (2, 3))
    assert isinstance(mask, sp.csr_matrix) and mask.nnz == 2
    assert pd.DataFrame(mask.toarray()).values.tolist() == [[False, False, True], [True, False, False]]


def test_chunk_users_setting():
    from recpipe.config import Settings
    from recpipe.models.topk import DEFAULT_CHUNK_USERS

    assert Settings.from_env({}).chunk_users == Settings().chunk_users == DEFAULT_CHUNK_USERS
    assert Settings.from_env({"RECPIPE_CHUNK_USERS": "64"}).chunk_users == 64
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match="RECPIPE_CHUNK_USERS"):
            Settings.from_env({"RECPIPE_CHUNK_USERS": bad})


def test_seen_movies_is_a_compact_mapping_that_flattens_like_a_dict_of_sets():
    from recpipe.models.topk import group_lists
    from recpipe.recommenders.base import SeenMovies

    rng = np.random.default_rng(0)
    users, movies = rng.integers(1, 50, 2000), rng.integers(1, 300, 2000)  # repeats included
    seen = SeenMovies(users, movies)
    as_sets = {}
    for u, m in zip(users.tolist(), movies.tolist()):
        as_sets.setdefault(u, set()).add(m)
    assert list(seen) == sorted(as_sets) and len(seen) == len(as_sets)
    assert all(seen[u].tolist() == sorted(ms) for u, ms in as_sets.items())
    assert 0 not in seen and "a" not in seen and seen.get(0, ()) == ()
    keys = [7, 0, 3, 99, 7]  # a user twice, users never seen
    rows, values = flatten(group_lists(seen, keys))
    expected = flatten([sorted(as_sets.get(k, ())) for k in keys])
    assert np.array_equal(rows, expected[0]) and np.array_equal(values, expected[1])


def test_unique_sorted_equals_np_unique():
    from recpipe.models.topk import unique_sorted

    rng = np.random.default_rng(1)
    for values in (rng.integers(-5, 5, 100), rng.integers(0, 2**40, 1000), np.zeros(0, np.int64), np.array([3])):
        assert np.array_equal(unique_sorted(values), np.unique(values))
