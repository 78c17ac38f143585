"""GRU4Rec model: shapes, lanes, state resets, learning a planted pattern, save/load,
top-k scoring. Small generated data only."""
from __future__ import annotations

import os

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from recpipe.evaluation.seed002 import evaluate_popularity, evaluate_sequences, popularity_scores, sequence_validator
from recpipe.models.gru4rec import (
    GRU4RecBundle,
    GRU4RecConfig,
    ItemIndex,
    fit_gru4rec,
    pack_lanes,
    session_sequences,
)
from recpipe.models.gru4rec.network import _build_networks
from recpipe.recommenders.gru4rec import score_top_k

N_ITEMS = 24
TINY = GRU4RecConfig(hidden=24, embedding_dim=16, dropout=0.0, learning_rate=0.02, batch_size=8,
                     bptt=8, epochs=6, patience=0, seed=7)


def planted_events(n_sessions=240, seed=0, n_items=N_ITEMS, first_movie=100):
    """Sessions where movie (first_movie + i) is always followed by first_movie + (i+1) mod n;
    session starts are drawn from a skewed distribution (popular != next item)."""
    rng = np.random.default_rng(seed)
    rows, ts, line = [], 1_000_000, 0
    p = np.arange(n_items, 0, -1, dtype=float) ** 2
    p /= p.sum()
    for sid in range(n_sessions):
        start = rng.choice(n_items, p=p)
        length = int(rng.integers(3, 10))
        for j in range(length):
            line += 1
            ts += 30
            rows.append((sid % 40 + 1, first_movie + (start + j) % n_items, 4, ts, line, sid))
        ts += 10_000
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts", "line_no", "session_id"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    train = planted_events(240, seed=0)
    val = planted_events(40, seed=1)
    out = tmp_path_factory.mktemp("gru4rec")
    bundle, history = fit_gru4rec(train, TINY, validate=sequence_validator(val), out_dir=out, verbose=0)
    return bundle, history, train, out


# ----------------------------------------------------------------------- config/index
def test_config_round_trip_and_unknown_field():
    cfg = GRU4RecConfig(hidden=32, bptt=4)
    assert GRU4RecConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        GRU4RecConfig.from_dict({"hidden": 8, "nope": 1})


def test_item_index_encode_decode_json():
    idx = ItemIndex([30, 10, 20, 10])
    assert list(idx.movie_ids) == [10, 20, 30]
    assert list(idx.encode([20, 99, 10])) == [1, -1, 0]
    assert list(idx.decode([2, 0])) == [30, 10]
    again = ItemIndex.from_json(idx.to_json())
    assert list(again.movie_ids) == [10, 20, 30] and 20 in again and 5 not in again


# ------------------------------------------------------------------------ lane packing
def test_pack_lanes_covers_every_step_once_with_resets():
    seqs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6]), np.array([7, 8, 9, 10, 11])]
    items, reset, targets, weights = pack_lanes(seqs, n_lanes=2, bptt=3, rng=np.random.default_rng(0))
    assert items.shape == reset.shape == targets.shape == weights.shape
    assert items.shape[0] % 2 == 0 and items.shape[1] == 3
    real = weights > 0
    assert int(real.sum()) == 2 + 1 + 0 + 4  # every next-item step, length-1 session has none
    pairs = sorted(zip(items[real].tolist(), targets[real].tolist()))
    assert pairs == [(1, 2), (2, 3), (4, 5), (7, 8), (8, 9), (9, 10), (10, 11)]
    # rebuild each lane's stream: window w of lane l is row w * n_lanes + l
    n_windows = items.shape[0] // 2
    for lane in range(2):
        rows = [w * 2 + lane for w in range(n_windows)]
        it, rs, wt = (np.concatenate([a[r] for r in rows]) for a in (items, reset, weights))
        starts = it[(rs == 1) & (wt > 0)]
        assert set(starts.tolist()) <= {1, 4, 7}  # resets exactly at session starts
        # inside a session, consecutive positions carry consecutive items, no reset
        for pos in range(1, len(it)):
            if wt[pos] > 0 and rs[pos] == 0:
                assert wt[pos - 1] > 0 and it[pos] == it[pos - 1] + 1


def test_pack_lanes_target_horizon_draws_items_ahead_within_the_sequence():
    seqs = [np.arange(100, 140), np.arange(200, 203), np.array([300, 301])]
    items, _, targets, weights = pack_lanes(seqs, n_lanes=2, bptt=4, rng=np.random.default_rng(1),
                                            target_horizon=5)
    real = weights > 0
    ahead = targets[real] - items[real]
    assert int(real.sum()) == 39 + 2 + 1  # the same steps as next-item training
    assert ahead.min() == 1 and ahead.max() == 5  # 1..5 steps ahead, both ends drawn
    assert np.all(targets[real] // 100 == items[real] // 100)  # never past the sequence's end
    assert sorted(ahead[items[real] // 100 == 3].tolist()) == [1]  # a 2-item sequence: only the next
    again = pack_lanes(seqs, n_lanes=2, bptt=4, rng=np.random.default_rng(1))[2]
    assert np.all((again[real] - items[real]) == 1)  # target_horizon 1: the next item


def test_pack_lanes_target_gap_draws_items_rated_after_the_gap():
    """Two bursts a week apart (items 100.. then 120..) and a one-day sequence: steps of
    the first burst learn an item of the second; the rest keep the next item."""
    day = 86_400
    first, second = np.arange(100, 110), np.arange(120, 125)
    seqs = [np.r_[first, second], np.arange(200, 204)]
    times = [np.r_[np.arange(10) * 60, 7 * day + np.arange(5) * 60], 3 * day + np.arange(4) * 60]
    got_targets = set()
    for seed in range(20):
        items, _, targets, weights = pack_lanes(seqs, n_lanes=2, bptt=4, rng=np.random.default_rng(seed),
                                                times=times, target_gap=timedelta(days=1))
        real = weights > 0
        assert int(real.sum()) == 14 + 3  # the same steps as next-item training
        in_first = real & (items >= 100) & (items < 110)
        assert np.all((targets[in_first] >= 120) & (targets[in_first] < 125))  # after the gap
        rest = real & ~in_first
        assert np.all(targets[rest] == items[rest] + np.where(items[rest] == 109, 11, 1))  # the next item
        got_targets |= set(targets[in_first].tolist())
    assert got_targets == set(range(120, 125))  # uniform over all of them, both ends drawn
    with pytest.raises(ValueError, match="times"):
        pack_lanes(seqs, n_lanes=2, bptt=4, rng=np.random.default_rng(0), target_gap=timedelta(days=1))


# ------------------------------------------------------------------------ networks
def test_network_shapes():
    cfg = GRU4RecConfig(hidden=8, embedding_dim=6, batch_size=4, bptt=5)
    train_model, infer_model = _build_networks(11, cfg)
    x = np.zeros((4, 5), np.int32)
    r = np.zeros((4, 5), np.float32)
    assert tuple(train_model.predict_on_batch([x, r]).shape) == (4, 5, 11)
    x2 = np.zeros((3, 7), np.int32)
    assert tuple(infer_model.predict_on_batch([x2, np.zeros((3, 7), np.float32)]).shape) == (3, 7, 11)


def test_hidden_state_resets_at_session_start():
    """A session packed after another one with a reset flag scores exactly like the
    same session run alone; without the flag (state leaking) it does not."""
    cfg = GRU4RecConfig(hidden=8, embedding_dim=6, batch_size=2, bptt=6, dropout=0.0, seed=3)
    train_model, infer_model = _build_networks(10, cfg)
    first, second = [1, 2, 3], [4, 5, 6]
    packed = np.array([first + second], np.int32)
    flags = np.array([[1, 0, 0, 1, 0, 0]], np.float32)
    alone = infer_model.predict_on_batch([np.array([second], np.int32), np.zeros((1, 3), np.float32)])
    with_reset = infer_model.predict_on_batch([packed, flags])
    leaked = infer_model.predict_on_batch([packed, np.zeros_like(flags)])
    np.testing.assert_allclose(with_reset[0, 3:], alone[0], rtol=1e-5, atol=1e-5)
    assert np.abs(leaked[0, 3:] - alone[0]).max() > 1e-3

    # stateful training network: state carries across windows unless the flag resets it
    lanes = np.array([first + second, second + first], np.int32)
    train_model.get_layer("gru_train").reset_state()
    train_model.predict_on_batch([lanes, np.zeros((2, 6), np.float32)])  # leaves a state
    fresh = np.ones((2, 6), np.float32) * np.array([1, 0, 0, 1, 0, 0], np.float32)
    after = train_model.predict_on_batch([lanes, fresh])
    np.testing.assert_allclose(after[0, 3:], alone[0], rtol=1e-5, atol=1e-5)
    carried = train_model.predict_on_batch([lanes, np.zeros((2, 6), np.float32)])
    assert np.abs(carried[0, 3:] - alone[0]).max() > 1e-3


def test_sequence_logits_independent_of_batch_company(trained):
    bundle = trained[0]
    a = np.array([0, 1, 2, 3], np.int32)
    b = np.array([5, 6], np.int32)
    alone = bundle.sequence_logits([a])[0]
    mixed = bundle.sequence_logits([b, a, np.array([9, 8, 7, 6, 5, 4, 3], np.int32)])[1]
    np.testing.assert_allclose(alone, mixed, rtol=1e-5, atol=1e-5)
    last = bundle.sequence_logits([a], last_only=True)[0]
    np.testing.assert_allclose(last, alone[-1], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- learning
def test_learns_planted_sequential_pattern(trained):
    bundle, history, train, out = trained
    test_seqs = session_sequences(planted_events(60, seed=2), bundle.index)
    learned = evaluate_sequences(bundle, test_seqs, k=1)
    pop = evaluate_popularity(popularity_scores(train, bundle.index), test_seqs, k=1)
    untrained_cfg = GRU4RecConfig.from_dict({**TINY.to_dict(), "epochs": 0})
    untrained, _ = fit_gru4rec(train, untrained_cfg, verbose=0)
    before = evaluate_sequences(untrained, test_seqs, k=1)
    assert learned["n_steps"] == sum(len(s) - 1 for s in test_seqs)
    assert learned["recall"] > 0.9, learned  # next item is deterministic
    assert before["recall"] < 0.3 and pop["recall"] < 0.3
    assert history["loss"][-1] < history["loss"][0]
    assert history["epochs_run"] == TINY.epochs and history["events_per_s"] > 0
    assert len(history["val_recall@20"]) == TINY.epochs
    assert (out / "gru4rec_training.png").stat().st_size > 0


def test_early_stopping_restores_best(tmp_path):
    cfg = GRU4RecConfig.from_dict({**TINY.to_dict(), "epochs": 8, "patience": 1, "learning_rate": 0.5})
    bundle, history = fit_gru4rec(planted_events(60), cfg, validate=sequence_validator(planted_events(20, seed=1)),
                                  verbose=0)
    assert 1 <= history["epochs_run"] <= 8
    best = max(history["val_recall@20"])
    assert history["val_recall@20"][history["best_epoch"] - 1] == best
    if history["epochs_run"] < 8:  # stopped after patience epochs without improvement
        assert history["epochs_run"] == history["best_epoch"] + 1
    val = evaluate_sequences(bundle, session_sequences(planted_events(20, seed=1), bundle.index))
    assert val["recall"] == pytest.approx(best)


def test_save_load_round_trip_identical_scores(trained, tmp_path):
    bundle = trained[0]
    bundle.save(tmp_path / "m")
    again = GRU4RecBundle.load(tmp_path / "m")
    assert again.config == bundle.config
    assert list(again.index.movie_ids) == list(bundle.index.movie_ids)
    seqs = [np.array([0, 1, 2], np.int32), np.array([7], np.int32)]
    for x, y in zip(bundle.sequence_logits(seqs), again.sequence_logits(seqs)):
        np.testing.assert_array_equal(x, y)
    hist = {1: [100, 101], 2: [110]}
    pd.testing.assert_frame_equal(score_top_k(bundle, hist, k=5), score_top_k(again, hist, k=5))


# ------------------------------------------------------------------------- top-k
def test_score_top_k_excludes_seen_and_returns_k_rows(trained):
    bundle = trained[0]
    histories = {1: [100, 101, 102], 2: [105], 3: [], 4: [999, 110]}  # 999 unknown: skipped
    seen = {1: {100, 101, 102, 103}, 2: {105, 106}, 4: {999}}
    top = score_top_k(bundle, histories, seen, k=5)
    assert list(top.columns) == ["user_id", "rank", "movie_id", "score"]
    assert top.groupby("user_id").size().to_dict() == {1: 5, 2: 5, 3: 5, 4: 5}
    for u, s in seen.items():
        assert not set(top.loc[top.user_id == u, "movie_id"]) & set(s)
    assert (top.groupby("user_id")["rank"].apply(list) == pd.Series({u: [1, 2, 3, 4, 5] for u in (1, 2, 3, 4)})).all()
    assert top.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    # with nothing excluded the planted successor comes first
    free = score_top_k(bundle, {5: [100, 101]}, {}, k=3)
    assert free.loc[free["rank"] == 1, "movie_id"].item() == 102


def test_score_top_k_tie_break_by_movie_id():
    cfg = GRU4RecConfig(hidden=4, embedding_dim=4, batch_size=2, bptt=2)
    _, infer = _build_networks(6, cfg)
    infer.set_weights([np.zeros_like(w) for w in infer.get_weights()])  # every score equal
    bundle = GRU4RecBundle(infer, ItemIndex([50, 10, 40, 20, 30, 60]), cfg)
    top = score_top_k(bundle, {7: [10], 8: []}, {7: {20}}, k=3)
    assert top[top.user_id == 7].movie_id.tolist() == [10, 30, 40]
    assert top[top.user_id == 8].movie_id.tolist() == [10, 20, 30]
    assert top.score.round(6).eq(round(1 / 6, 6)).all()


def test_tied_embedding_model_learns_and_round_trips(tmp_path):
    cfg = GRU4RecConfig.from_dict({**TINY.to_dict(), "tied": True, "embedding_dim": TINY.hidden})
    bundle, _ = fit_gru4rec(planted_events(240), cfg, verbose=0)
    seqs = session_sequences(planted_events(40, seed=2), bundle.index)
    assert evaluate_sequences(bundle, seqs, k=1)["recall"] > 0.8
    again = GRU4RecBundle.load(bundle.save(tmp_path / "tied"))
    for x, y in zip(bundle.sequence_logits(seqs[:3]), again.sequence_logits(seqs[:3])):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError):
        _build_networks(5, GRU4RecConfig(tied=True, hidden=8, embedding_dim=4))


# ------------------------------------------------------------------ sampled losses
def _sampled_layer(loss, n_items, dim, n_sample=0, **kwargs):
    """A SampledItemLoss over an ItemScores output layer (a row per item) with known
    weights; `kernel` is returned as [dim, items]."""
    from recpipe.models.gru4rec.layers import ItemScores, SampledItemLoss

    rng = np.random.default_rng(1)
    out = ItemScores(n_items, dim)
    out.build((None, dim))
    kernel, bias = rng.normal(size=(dim, n_items)).astype("float32"), rng.normal(size=n_items).astype("float32")
    out.set_weights([kernel.T, bias])
    layer = SampledItemLoss(n_items, loss, n_sample, kwargs.pop("sample_alpha", 0.5), **kwargs)
    layer.scores_layer = out
    layer.build(None)
    return layer, kernel, bias


def _reference_scores(h, targets, kernel, bias):
    scores = h @ kernel[:, targets] + bias[targets]
    n = len(targets)
    eye = np.eye(n, dtype=bool)
    negative = ~eye & (targets[None, :] != targets[:, None])
    return scores, eye, negative


def test_sampled_softmax_matches_reference_with_logq_and_masks():
    """In-batch sampled softmax: duplicates of a row's target and padding columns are no
    negatives; logQ subtracts logq * log(popularity) of each candidate."""
    n_items, dim = 7, 4
    counts = np.array([50, 1, 8, 3, 20, 0, 5])
    targets = np.array([0, 2, 0, 4, 6, 3], np.int32)  # item 0 twice
    weights = np.array([1, 1, 1, 1, 1, 0], np.float32)  # last position is padding
    h = np.random.default_rng(2).normal(size=(len(targets), dim)).astype("float32")
    for logq in (0.0, 1.0):
        layer, kernel, bias = _sampled_layer("sampled_softmax", n_items, dim, logq=logq)
        layer.set_popularity(counts)
        got = np.asarray(layer(h, targets, weights))
        scores, eye, negative = _reference_scores(h, targets, kernel, bias)
        scores = scores - logq * np.log(counts + 1.0)[targets][None, :]
        negative &= (weights > 0)[None, :]
        keep = negative | eye
        expected = [np.log(np.exp(scores[i, keep[i]]).sum()) - scores[i, i] for i in range(len(targets))]
        assert got.shape == (len(targets),)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the correction changes the loss (popular in-batch negatives count for less)
    plain, _, _ = _sampled_layer("sampled_softmax", n_items, dim, logq=0.0)
    plain.set_popularity(counts)
    assert np.abs(np.asarray(plain(h, targets, weights)) - got).max() > 1e-3


def test_bpr_max_matches_reference():
    n_items, dim, bpreg = 6, 3, 0.7
    targets = np.array([1, 3, 1, 5, 0], np.int32)
    weights = np.ones(len(targets), np.float32)
    h = np.random.default_rng(3).normal(size=(len(targets), dim)).astype("float32")
    layer, kernel, bias = _sampled_layer("bpr_max", n_items, dim, bpreg=bpreg, elu_param=0.0)
    layer.set_popularity(np.ones(n_items))
    got = np.asarray(layer(h, targets, weights))
    scores, eye, negative = _reference_scores(h, targets, kernel, bias)
    expected = []
    for i in range(len(targets)):
        s_neg = scores[i, negative[i]]
        soft = np.exp(s_neg - s_neg.max())
        soft /= soft.sum()
        sig = 1.0 / (1.0 + np.exp(-(scores[i, i] - s_neg)))
        expected.append(-np.log((soft * sig).sum()) + bpreg * (soft * s_neg ** 2).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_extra_negatives_follow_popularity_alpha():
    counts = np.array([0, 9, 99, 999])
    layer, _, _ = _sampled_layer("sampled_softmax", 4, 2, n_sample=20_000, sample_alpha=0.5)
    layer.set_popularity(counts)
    drawn = np.bincount(np.asarray(layer.sample()), minlength=4) / 20_000
    p = (counts + 1.0) ** 0.5
    np.testing.assert_allclose(drawn, p / p.sum(), atol=0.015)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr_max"])
def test_sampled_training_step_moves_only_candidate_outputs(loss):
    """Gradients reach the output rows of the mini-batch's items (and the GRU), never
    the rows of items that were not candidates (n_sample=0: in-batch only)."""
    import keras

    from recpipe.models.gru4rec.fit import _position_loss

    cfg = GRU4RecConfig(hidden=8, embedding_dim=6, batch_size=2, bptt=3, dropout=0.0, loss=loss, n_sample=0, seed=5)
    train_model, infer_model = _build_networks(10, cfg)
    train_model.get_layer("sampled_loss").set_popularity(np.ones(10))
    train_model.compile(optimizer=keras.optimizers.SGD(0.5), loss=_position_loss)
    items = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    targets = np.array([[2, 3, 7], [5, 6, 8]], np.int32)
    weights = np.ones((2, 3), np.float32)
    out = infer_model.get_layer("item_scores")  # shared with the training network
    before = out.get_weights()[0].copy()
    x = [items, np.zeros((2, 3), np.float32), targets, weights]
    first = float(train_model.train_on_batch(x, np.zeros((2, 3), np.float32), sample_weight=weights))
    moved = np.abs(out.get_weights()[0] - before).max(axis=1) > 0  # a row per item
    assert set(np.flatnonzero(moved)) == {2, 3, 5, 6, 7, 8}
    for _ in range(20):
        last = float(train_model.train_on_batch(x, np.zeros((2, 3), np.float32), sample_weight=weights))
    assert np.isfinite(first) and last < first


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="sparse gradients (IndexedSlices) exist on TensorFlow only; elsewhere LazyAdam is Adam")
@pytest.mark.parametrize("weight_decay", [None, 0.5])
def test_lazy_adam_moves_only_the_rows_a_batch_touches_and_is_adam_on_them(weight_decay):
    """Two steps on an embedding table (rows 1, 3 then 3, 3): untouched rows never move,
    a row's moments wait while it is unused, a row gathered twice gets one summed update;
    dense weights get Keras's own Adam step. With weight decay (AdamW's), a touched row
    decays at its update and an untouched one not at all; dense weights decay as AdamW's."""
    import keras

    from recpipe.models.lazy_adam import LazyAdam

    emb = keras.layers.Embedding(5, 2, embeddings_initializer="ones")
    dense = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)
    model = keras.Sequential([keras.Input((2,), dtype="int32"), emb, keras.layers.Flatten(), dense])
    model.compile(optimizer=LazyAdam(0.1, weight_decay=weight_decay), loss="mse")
    reference = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)])
    reference.compile(optimizer=keras.optimizers.Adam(0.1, weight_decay=weight_decay), loss="mse")
    m, v = np.zeros((5, 2)), np.zeros((5, 2))
    table = np.ones((5, 2))
    for step, rows in enumerate(([1, 3], [3, 3]), start=1):
        x = np.array([rows], np.int32)
        flat = table[rows].reshape(1, 4)
        w = dense.get_weights()[0][:, 0]
        residual = flat @ w - 2.0  # d(mse)/d(prediction) = 2 * residual
        grad = np.zeros((5, 2))
        for slot, row in enumerate(rows):  # each lookup's gradient: 2 * residual * its kernel weights
            grad[row] += 2 * residual[0] * w[2 * slot: 2 * slot + 2]
        touched = sorted(set(rows))
        m[touched] = 0.9 * m[touched] + 0.1 * grad[touched]
        v[touched] = 0.999 * v[touched] + 0.001 * grad[touched] ** 2
        alpha = 0.1 * np.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
        table[touched] -= 0.1 * (weight_decay or 0.0) * table[touched]
        table[touched] -= alpha * m[touched] / (np.sqrt(v[touched]) + 1e-7)
        reference.train_on_batch(flat.astype(np.float32), np.array([[2.0]], np.float32))
        model.train_on_batch(x, np.array([[2.0]], np.float32))
        np.testing.assert_allclose(emb.get_weights()[0], table, rtol=1e-5)
        np.testing.assert_allclose(dense.get_weights()[0], reference.layers[-1].get_weights()[0], rtol=1e-5)
    assert (emb.get_weights()[0][[0, 2, 4]] == 1.0).all()


@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr_max"])
def test_sampled_losses_learn_planted_pattern(loss):
    cfg = GRU4RecConfig.from_dict({**TINY.to_dict(), "loss": loss, "n_sample": 16})
    bundle, history = fit_gru4rec(planted_events(240), cfg, verbose=0)
    seqs = session_sequences(planted_events(40, seed=2), bundle.index)
    assert evaluate_sequences(bundle, seqs, k=1)["recall"] > 0.8
    assert history["loss"][-1] < history["loss"][0]


def test_auto_loss_is_the_full_softmax_on_small_catalogues_and_sampled_on_large_ones():
    from recpipe.models.gru4rec.config import FULL_SOFTMAX_MAX_ITEMS

    auto = GRU4RecConfig()
    assert auto.loss == "auto"
    assert auto.for_catalogue(3706).loss == "cross_entropy"  # ML-1M: unchanged
    assert auto.for_catalogue(FULL_SOFTMAX_MAX_ITEMS + 1).loss == "sampled_softmax"
    assert GRU4RecConfig(loss="bpr_max").for_catalogue(60_000).loss == "bpr_max"  # an explicit loss stays
    bundle, _ = fit_gru4rec(planted_events(40), GRU4RecConfig.from_dict({**TINY.to_dict(), "loss": "auto"}),
                            verbose=0)
    assert bundle.config.loss == "cross_entropy"  # the bundle records the loss it trained with


def test_loss_names_and_legacy_spelling():
    assert GRU4RecConfig(loss="cross-entropy").loss == "cross_entropy"  # runs stored before
    with pytest.raises(ValueError):
        GRU4RecConfig(loss="hinge")
    with pytest.raises(ValueError):
        GRU4RecConfig(sequences="days")


# ------------------------------------------------------------ serving from history
def _rated(events):
    """planted_events as stored ratings (rated_at from ts)."""
    return events.assign(rated_at=pd.to_datetime(events["ts"], unit="s", utc=True))


def test_user_served_from_several_sessions(trained):
    """The history spans the user's sessions in time order (last L liked, known movies);
    the last session alone is shorter, and the lists differ."""
    from recpipe.recommenders.gru4rec import recent_histories, serving_histories

    bundle = trained[0]
    ratings = pd.DataFrame({
        "user_id": [1] * 7 + [2],
        "movie_id": [100, 101, 102, 999, 110, 111, 105, 104],
        "rating": [5, 4, 2, 5, 4, 5, 4, 4],
        "ts": [10, 20, 30, 40, 10_000, 10_010, 20_000, 5],  # three sessions of user 1 (30-minute gap)
        "line_no": range(8),
    })
    params = {"mode": "gap", "session_gap": "1800s", "bucket": "7200s", "min_rating": 3}
    assert recent_histories(ratings, [1, 2], 4, 3, bundle.index) == {1: [101, 110, 111, 105], 2: [104]}
    long = serving_histories(bundle, ratings, params, {"mode": "history", "history_length": 200}, [1])
    last = serving_histories(bundle, ratings, params, {"mode": "last_session"}, [1])
    assert long == {1: [100, 101, 110, 111, 105]}  # 102 disliked, 999 unknown to the model
    assert last == {1: [105]}
    # the earlier sessions change the state the user is scored from
    a, b = score_top_k(bundle, long, k=5), score_top_k(bundle, last, k=5)
    assert not np.allclose(a.score.to_numpy(), b.score.to_numpy())


def test_history_length_chosen_on_validation_and_recorded(trained):
    from recpipe.recommenders.gru4rec import choose_serving

    bundle, _, train, _ = trained
    ratings = _rated(planted_events(300, seed=4))
    cutoff = ratings["rated_at"].max() + pd.Timedelta(seconds=1)
    params = {"mode": "gap", "session_gap": "1800s", "bucket": "7200s", "min_rating": 3}
    days = int(np.ceil((cutoff - ratings["rated_at"].min()).days / 4)) + 1
    serving = choose_serving(bundle, ratings, params, {"serving": "history", "history_lengths": [50, 1, 3],
                                                       "validation_days": days}, cutoff)
    assert serving["mode"] == "history" and serving["candidates"] == [1, 3, 50]
    assert serving["validation_users"] > 0
    log = serving["choice_log"]
    assert [e["mode"] for e in log] == ["last_session", "history", "history", "history"]
    best = max((e for e in log if e["mode"] == "history"), key=lambda e: e["ndcg_at_10"])
    assert serving["history_length"] == best["history_length"]
    fixed = choose_serving(bundle, ratings, params, {"serving": "history", "history_lengths": [7],
                                                     "validation_days": days}, cutoff)
    assert fixed["history_length"] == 7 and fixed["choice_log"] == []
    assert choose_serving(bundle, ratings, params, {"serving": "last_session", "history_lengths": [7],
                                                    "validation_days": days}, cutoff)["mode"] == "last_session"


def test_serving_settings_validated():
    from recpipe.recommenders.gru4rec import RECOMMENDER

    config = RECOMMENDER.make_config({"history_lengths": [5, 20], "loss": "bpr_max"}, 2)
    assert config["history_lengths"] == [5, 20] and config["epochs"] == 2 and config["loss"] == "bpr_max"
    # the product trains on user sequences; the model's own default (session protocol) stays
    assert config["sequences"] == "users" and GRU4RecConfig().sequences == "sessions"
    assert RECOMMENDER.make_config(config, None) == config
    for bad in ({"serving": "everything"}, {"history_lengths": []}, {"history_lengths": [0]},
                {"validation_days": 0}, {"loss": "hinge"}, {"sequences": "days"}):
        with pytest.raises(ValueError):
            RECOMMENDER.make_config(bad, None)


def test_user_level_sequences_cross_sessions():
    events = planted_events(120)  # 40 users, three sessions each
    index = ItemIndex.from_events(events)
    by_user = session_sequences(events, index, "user_id")
    by_session = session_sequences(events, index)
    assert len(by_user) == events["user_id"].nunique() < len(by_session)
    assert sum(map(len, by_user)) == sum(map(len, by_session)) == len(events)
    cfg = GRU4RecConfig.from_dict({**TINY.to_dict(), "sequences": "users", "epochs": 1})
    _, history = fit_gru4rec(events, cfg, verbose=0)
    # a user's sequence has one step fewer than its sessions had together: the joins train
    assert history["train_steps"] == len(events) - len(by_user)


def test_nightly_keeps_the_epoch_with_the_best_validation_ndcg_and_its_serving_choice(tmp_path):
    from recpipe.models.gru4rec.network import GRU4RecBundle
    from recpipe.recommenders.gru4rec import RECOMMENDER, VALIDATION_METRIC, choose_serving

    events = planted_events(300, seed=4)
    ratings = _rated(events)
    cutoff = ratings["rated_at"].max() + pd.Timedelta(seconds=1)
    params = {"mode": "gap", "session_gap": "1800s", "bucket": "7200s", "min_rating": 3}
    days = int(np.ceil((cutoff - ratings["rated_at"].min()).days / 4)) + 1
    network = {k: v for k, v in TINY.to_dict().items() if k not in ("monitor", "sequences", "target_horizon")}
    config = RECOMMENDER.make_config({**network, "epochs": 4, "patience": 0, "learning_rate": 0.05,
                                      "history_lengths": [1, 3], "validation_days": days}, None)
    assert config["monitor"] == VALIDATION_METRIC  # the nightly's default
    stats = {"train_until": cutoff.isoformat(), "session_params": params}
    fitted = RECOMMENDER.fit((events, stats, ratings), config, tmp_path, verbose=0)
    curve = fitted.training["curves"][VALIDATION_METRIC]
    best = int(fitted.training["best_epoch"])
    assert len(curve) == 4 and best == int(np.argmax(curve)) + 1
    serving = fitted.data_stats["serving"]
    kept = max(e["ndcg_at_10"] for e in serving["choice_log"] if e["mode"] == "history")
    assert kept == pytest.approx(curve[best - 1])
    # the saved model is that epoch's: its serving choice scores the same again
    again = choose_serving(GRU4RecBundle.load(tmp_path), ratings, params, {"serving": "history",
                           "history_lengths": [1, 3], "validation_days": days}, cutoff)
    assert again["history_length"] == serving["history_length"]
    assert max(e["ndcg_at_10"] for e in again["choice_log"] if e["mode"] == "history") == pytest.approx(kept)
