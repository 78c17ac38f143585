"""EASE and item-kNN on small generated data: planted groups are learnt, lists are
well-formed (k rows, no seen item, ties by movie_id), save/load round-trips, and EASE
matches a closed form worked out by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpipe.models import ease, itemknn

GROUPS = 3
PER_GROUP = 8


def planted(users: int = 90, seed: int = 0) -> pd.DataFrame:
    """Movie ids 101.. in GROUPS blocks of PER_GROUP; each user likes (4-5) half of one
    block and dislikes (1-2) a few movies of the other blocks."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        g = u % GROUPS
        own = 101 + g * PER_GROUP + np.arange(PER_GROUP)
        other = np.setdiff1d(101 + np.arange(GROUPS * PER_GROUP), own)
        rows += [(u, int(m), int(rng.integers(4, 6))) for m in rng.choice(own, PER_GROUP // 2, replace=False)]
        rows += [(u, int(m), int(rng.integers(1, 3))) for m in rng.choice(other, 3, replace=False)]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])


def group_of(movie_id: int) -> int:
    return (movie_id - 101) // PER_GROUP


FITS = {
    "ease": lambda df: ease.fit(df, ease.EASEConfig(lambda_=10.0)),
    "itemknn": lambda df: itemknn.fit(df, itemknn.ItemKNNConfig(neighbours=10)),
}
LOAD = {"ease": ease.EASEModel.load, "itemknn": itemknn.ItemKNNModel.load}


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.mark.parametrize("name", list(FITS))
def test_planted_groups_are_learnt_and_lists_well_formed(name, data):
    model = FITS[name](data)
    # new users: two liked movies of one group each
    histories = {1000 + g: [101 + g * PER_GROUP, 102 + g * PER_GROUP] for g in range(GROUPS)}
    k = 4
    top = model.score_top_k(histories, k=k)
    for user, hist in histories.items():
        mine = top[top["user_id"] == user]
        assert mine["rank"].tolist() == list(range(1, k + 1))
        assert not set(mine["movie_id"]) & set(hist)
        assert {group_of(m) for m in mine["movie_id"]} == {group_of(hist[0])}, mine
        assert mine["score"].is_monotonic_decreasing


@pytest.mark.parametrize("name", list(FITS))
def test_seen_never_recommended_and_k_rows_per_user(name, data):
    model = FITS[name](data)
    seen = data.groupby("user_id")["movie_id"].agg(list).to_dict()
    liked = data[data["rating"] >= 4].groupby("user_id")["movie_id"].agg(list).to_dict()
    top = model.score_top_k(liked, exclude=seen, k=10, chunk_size=7)  # chunks of 7 users
    assert top.groupby("user_id").size().eq(10).all() and set(top["user_id"]) == set(liked)
    merged = top.merge(data, on=["user_id", "movie_id"], how="inner")
    assert merged.empty
    # asking for more than the unseen catalogue gives what is left, never a seen movie
    big = model.score_top_k({0: liked[0]}, exclude={0: seen[0]}, k=1000)
    assert len(big) == GROUPS * PER_GROUP - len(seen[0])


@pytest.mark.parametrize("name", list(FITS))
def test_save_load_gives_identical_lists(name, data, tmp_path):
    model = FITS[name](data)
    histories = data[data["rating"] >= 4].groupby("user_id")["movie_id"].agg(list).to_dict()
    before = model.score_top_k(histories, k=5)
    model.save(tmp_path / name)
    assert not list((tmp_path / name).glob("*.pkl"))
    after = LOAD[name](tmp_path / name).score_top_k(histories, k=5)
    pd.testing.assert_frame_equal(before, after)
    assert LOAD[name](tmp_path / name).config == model.config


@pytest.mark.parametrize("name", list(FITS))
def test_ties_broken_by_ascending_movie_id(name, data):
    model = FITS[name](data)
    # an empty history scores every movie 0: the list is the smallest unexcluded ids
    top = model.score_top_k({7: []}, exclude={7: [101, 103]}, k=4)
    assert top["movie_id"].tolist() == [102, 104, 105, 106]
    assert (top["score"] == 0).all()


def test_ease_matches_hand_computed_closed_form():
    # items A=10, B=20, C=30, D=40; users: {A,B}, {A,B}, {A,C}, {D}; the rating-3 row
    # is not a positive at min_rating 4
    rows = [(1, 10, 5), (1, 20, 4), (2, 10, 4), (2, 20, 5), (3, 10, 4), (3, 30, 5), (4, 40, 4),
            (4, 30, 3)]
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])
    model = ease.fit(df, ease.EASEConfig(lambda_=1.0, min_rating=4))
    # X^T X + I over A, B, C = [[4,2,1],[2,3,0],[1,0,2]] (det 13), D alone = [[2]];
    # P = adj/13 = [[6,-4,-3],[-4,7,2],[-3,2,8]]/13; B_ij = -P_ij / P_jj
    expected = np.array([
        [0, 4 / 7, 3 / 8, 0],
        [4 / 6, 0, -2 / 8, 0],
        [3 / 6, -2 / 7, 0, 0],
        [0, 0, 0, 0],
    ])
    assert model.movie_ids.tolist() == [10, 20, 30, 40]
    np.testing.assert_allclose(model.B, expected, atol=1e-6)
    # scores of a user who liked A and C: row A + row C
    np.testing.assert_allclose(model.scores([[10, 30]])[0], expected[0] + expected[2], atol=1e-6)


def test_itemknn_cosine_shrinkage_and_neighbour_cap():
    # A liked by users 1,2,3; B by 1,2; C by 3; D by 4
    rows = [(1, 10, 5), (2, 10, 5), (3, 10, 5), (1, 20, 4), (2, 20, 4), (3, 30, 4), (4, 40, 4)]
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])
    w = itemknn.fit(df, itemknn.ItemKNNConfig(neighbours=5)).W.toarray()
    assert w[0, 1] == pytest.approx(2 / np.sqrt(3 * 2)) and w[1, 0] == pytest.approx(2 / np.sqrt(6))
    assert w[0, 2] == pytest.approx(1 / np.sqrt(3)) and w[1, 2] == 0 and np.all(np.diag(w) == 0)
    assert not w[3].any() and not w[:, 3].any()
    shrunk = itemknn.fit(df, itemknn.ItemKNNConfig(neighbours=5, shrinkage=2.0)).W.toarray()
    assert shrunk[0, 1] == pytest.approx(2 / (np.sqrt(6) + 2))
    one = itemknn.fit(df, itemknn.ItemKNNConfig(neighbours=1)).W.toarray()
    # column A keeps only its nearest item: B (0.816) over C (0.707)
    assert np.count_nonzero(one[:, 0]) == 1 and one[1, 0] > 0
    assert (np.count_nonzero(one, axis=0) <= 1).all()


def test_itemknn_neighbours_are_each_items_largest_with_ties_to_the_lower_item():
    """The partition-based selection keeps what a stable full sort of each item's
    similarities keeps (a column of `sim` here, a row of the fit's block)."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, block = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        keep = int(rng.integers(1, n + 1))
        sim = rng.integers(0, 4, (n, block)) / 3  # many ties, many zeros
        top = np.argsort(-sim, axis=0, kind="stable")[:keep]
        value = np.take_along_axis(sim, top, axis=0)
        expected = {(r, c) for r, c, v in zip(top.ravel(), np.broadcast_to(np.arange(block), top.shape).ravel(),
                                               value.ravel()) if v > 0}
        items, near, _ = itemknn._top_per_row(sim.T, keep)
        assert set(zip(near.tolist(), items.tolist())) == expected and len(near) == len(expected)


def test_itemknn_fit_many_gives_each_config_its_own_fit(data):
    configs = [itemknn.ItemKNNConfig(neighbours=n, shrinkage=s, max_items=m)
               for n in (1, 3, 50) for s in (0.0, 5.0) for m in (None, 8)]
    for config, model in zip(configs, itemknn.fit_many(data, configs, block=7)):
        alone = itemknn.fit(data, config, block=5)
        assert model.config == config and np.array_equal(model.movie_ids, alone.movie_ids)
        assert (model.W != alone.W).nnz == 0 and model.W.nnz == alone.W.nnz


def test_ease_fit_many_shares_the_gram_and_matches_a_float64_inverse(data, monkeypatch):
    configs = [ease.EASEConfig(lambda_=lam, min_rating=r, max_items=m)
               for lam in (1.0, 30.0) for r in (3, 4) for m in (None, 8)]
    for config, model in zip(configs, ease.fit_many(data, configs)):
        x, movie_ids = ease.positives_matrix(data, config.min_rating, config.max_items)
        np.testing.assert_array_equal(ease.gram_matrix(x, block=3), (x.T @ x).toarray())  # blocks on threads
        gram = (x.T @ x).toarray().astype(np.float64) + config.lambda_ * np.eye(len(movie_ids))
        p = np.linalg.inv(gram)  # the textbook closed form, in float64
        expected = -p / np.diag(p)[None, :]
        np.fill_diagonal(expected, 0.0)
        assert model.config == config and np.array_equal(model.movie_ids, movie_ids)
        assert model.B.dtype == np.float32
        np.testing.assert_allclose(model.B, expected, atol=1e-5)
        np.testing.assert_array_equal(model.B, ease.fit(data, config).B)
    assert ease._inverse_spd(np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)) is None  # not positive definite
    # where float32's Cholesky breaks down, the fit redoes the inverse in float64
    cholesky = ease.fit(data, configs[0]).B
    monkeypatch.setattr(ease, "_inverse_spd", lambda a: None)
    fallback = ease.fit(data, configs[0]).B
    assert fallback.dtype == np.float32 and not np.array_equal(fallback, cholesky)  # another path ran
    np.testing.assert_allclose(fallback, cholesky, atol=1e-5)


def test_choosers_pick_the_best_logged_candidate(data):
    liked = data[data["rating"] >= 4]
    held = liked.groupby("user_id").sample(1, random_state=3)
    train = data.drop(held.index)
    model, lam, log = ease.choose_lambda(train, held, [1.0, 10.0, 1e4])
    assert [e["candidate"] for e in log] == [1.0, 10.0, 1e4]
    best = max(log, key=lambda e: e["ndcg@10"])
    assert lam == best["candidate"] and model.config.lambda_ == lam
    assert best["ndcg@10"] > 0.3  # the held-out movie is in the user's group: easy
    cfgs = [itemknn.ItemKNNConfig(neighbours=n) for n in (1, 10)]
    kmodel, cfg, klog = itemknn.choose_config(train, held, cfgs)
    assert cfg == max(zip(cfgs, klog), key=lambda p: p[1]["ndcg@10"])[0] and kmodel.config == cfg


def test_item_budget_keeps_the_most_popular_items_and_drops_the_rest():
    # positives: A=10 by 3 users, B=20 by 2, C=30 by 2 (tie with B: lower id wins), D=40 by 1
    rows = [(1, 10, 5), (2, 10, 5), (3, 10, 5), (1, 20, 4), (2, 20, 4), (3, 30, 4), (4, 30, 4), (4, 40, 4),
            (4, 50, 2)]
    df = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])
    for fitted in (ease.fit(df, ease.EASEConfig(lambda_=1.0, max_items=2)),
                   itemknn.fit(df, itemknn.ItemKNNConfig(neighbours=5, max_items=2))):
        assert fitted.movie_ids.tolist() == [10, 20]
        assert fitted.scores([[10, 30, 40]]).shape == (1, 2)  # unknown history items are skipped
    # a budget at or above the catalogue changes nothing
    full = ease.fit(df, ease.EASEConfig(lambda_=1.0))
    same = ease.fit(df, ease.EASEConfig(lambda_=1.0, max_items=4))
    assert same.movie_ids.tolist() == full.movie_ids.tolist() == [10, 20, 30, 40]
    np.testing.assert_array_equal(same.B, full.B)
    # the budget is saved with the model
    kept = ease.fit(df, ease.EASEConfig(lambda_=1.0, max_items=3))
    assert kept.movie_ids.tolist() == [10, 20, 30]


def test_item_budget_is_in_the_nightly_config_and_validated():
    from recpipe.recommenders.ease import RECOMMENDER as EASE
    from recpipe.recommenders.itemknn import RECOMMENDER as KNN

    for rec in (EASE, KNN):
        config = rec.make_config(None, None)
        assert config["max_items"] >= 3883  # ML-1M's catalogue is kept whole
        assert {c.max_items for c in rec.candidates(config)} == {config["max_items"]}
        assert {c.max_items for c in rec.candidates(rec.make_config({"max_items": None}, None))} == {None}
        for bad in (0, -5, 2.5, True, "10"):
            with pytest.raises(ValueError, match="max_items"):
                rec.make_config({"max_items": bad}, None)
