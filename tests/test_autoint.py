"""AutoInt+ layers, model, training and top-k scoring on small generated data."""
import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from recpipe.recommenders.autoint import score_catalogue as score_top_k  # noqa: E402
from recpipe.models.autoint import (  # noqa: E402
    DEFAULT_CONFIG,
    SEED000_CONFIG,
    AutoIntConfig,
    DNNTower,
    FieldEmbedding,
    InteractingLayer,
    build_autoint,
    fit_autoint,
    load_model,
    predict_proba,
    save_model,
)

FIELD_DIMS = [5, 7, 3]
SMALL = AutoIntConfig(embed_dim=8, att_layers=2, att_heads=2, dnn_units=(16,), dropout=0.1, l2_dnn=1e-4,
                      l2_embedding=1e-6, learning_rate=1e-2, decay_steps=0, batch_size=128, epochs=8,
                      patience=3, seed=7)


def codes(n, dims=FIELD_DIMS, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, d, n) for d in dims], axis=1).astype(np.int32)


def test_config_round_trip():
    for cfg in (SEED000_CONFIG, DEFAULT_CONFIG, SMALL):
        assert AutoIntConfig.from_dict(cfg.to_dict()) == cfg
    assert SEED000_CONFIG.embed_dim == 32 and SEED000_CONFIG.att_layers == 3 and SEED000_CONFIG.att_heads == 2
    assert SEED000_CONFIG.dnn_units == (32, 32) and SEED000_CONFIG.batch_size == 2048
    with pytest.raises(ValueError):
        AutoIntConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        AutoIntConfig(embed_dim=10, att_heads=3)
    with pytest.raises(ValueError):
        AutoIntConfig(optimizer="sgd")


@pytest.mark.parametrize("optimizer", ["adamw", "lazy_adam"])
def test_lazy_adam_moves_only_the_embedding_rows_training_looks_up(optimizer):
    """Codes 4 of field 0 and 6 of field 1 never occur in training: with `lazy_adam` their
    rows keep their initial values (weight decay included); Keras's AdamW moves every row."""
    dims = [5, 7, 3]
    X = codes(600, [4, 6, 3], seed=3)
    y = (X[:, 0] % 2 == 0).astype(np.float32)
    cfg = SMALL.with_(optimizer=optimizer, epochs=2, weight_decay=1e-2)
    keras.utils.set_random_seed(cfg.seed)
    initial = build_autoint(dims, cfg).get_layer("embedding").get_weights()[0]
    model, _ = fit_autoint(X, y, dims, cfg, verbose=0)
    table = model.get_layer("embedding").get_weights()[0]
    unused = [4, 5 + 6]  # rows of those codes: field offsets 0 and 5
    used = [0, 5, 12]
    assert not np.allclose(table[used], initial[used])
    assert np.array_equal(table[unused], initial[unused]) == (optimizer == "lazy_adam")


def test_layer_shapes_and_config_round_trip():
    x = codes(4)
    emb = FieldEmbedding(FIELD_DIMS, 6, l2=1e-3)
    e = emb(x)
    assert tuple(e.shape) == (4, 3, 6)
    # field f's code c is row offsets[f] + c of the shared table
    table = keras.ops.convert_to_numpy(emb.embeddings)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(e)[0, 1], table[FIELD_DIMS[0] + x[0, 1]])
    inter = InteractingLayer(4, heads=3, use_res=True, scaling=True, layer_norm=True)
    out = inter(e)
    assert tuple(out.shape) == (4, 3, 12)
    dnn = DNNTower((8, 4), dropout=0.2, l2=1e-3)
    logit = dnn(keras.ops.reshape(e, (4, -1)))
    assert tuple(logit.shape) == (4, 1)
    for layer in (emb, inter, dnn):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_keras_save_load_identical_predictions(tmp_path):
    model = build_autoint(FIELD_DIMS, SMALL.with_(layer_norm=True, att_scaling=True))
    x = codes(64, seed=3)
    before = predict_proba(model, x)
    path = save_model(model, tmp_path / "m.keras")
    again = load_model(path)
    np.testing.assert_array_equal(predict_proba(again, x), before)
    assert before.dtype == np.float32 and before.shape == (64,)


def test_head_can_predict_below_half():
    """Seed 000 put ReLU/dropout on its logits, so p >= 0.5 always. Ours must not."""
    model = build_autoint(FIELD_DIMS, SMALL)
    dense = model.get_layer("att_logit")
    x = codes(32, seed=5)
    # Negative DNN logit (bias -5) and a non-positive attention logit: with the seed's
    # ReLU on each logit the probability would be exactly 0.5; ours must go below.
    dnn_logit = model.get_layer("dnn").logit
    dnn_logit.kernel.assign(np.zeros(dnn_logit.kernel.shape, dtype="float32"))
    dnn_logit.bias.assign(np.full(dnn_logit.bias.shape, -5.0, dtype="float32"))
    dense.kernel.assign(-np.ones(dense.kernel.shape, dtype="float32"))
    p = predict_proba(model, x)
    assert p.max() < 0.01
    dnn_logit.bias.assign(np.full(dnn_logit.bias.shape, 5.0, dtype="float32"))
    dense.kernel.assign(np.zeros(dense.kernel.shape, dtype="float32"))
    assert predict_proba(model, x).min() > 0.99


def planted(n, seed):
    """label = 1 iff (user group + movie group) is even, with 10% noise; other fields random."""
    rng = np.random.default_rng(seed)
    dims = [41, 31, 4, 6]
    x = np.stack([rng.integers(1, d, n) for d in dims], axis=1).astype(np.int32)
    y = ((x[:, 0] % 2 + x[:, 1] % 2) % 2 == 0).astype(np.float32)
    flip = rng.random(n) < 0.1
    y[flip] = 1 - y[flip]
    return x, y, dims


def test_planted_pattern_is_learned(tmp_path):
    from sklearn.metrics import roc_auc_score

    X, y, dims = planted(6000, seed=1)
    X_test, y_test, _ = planted(2000, seed=2)
    untrained = build_autoint(dims, SMALL)
    auc_before = roc_auc_score(y_test, predict_proba(untrained, X_test))
    model, hist = fit_autoint(X, y, dims, SMALL, out_dir=tmp_path, verbose=0)
    auc_after = roc_auc_score(y_test, predict_proba(model, X_test))
    # the pattern is an interaction (XOR of groups): no single field predicts it
    assert auc_after > 0.8, (auc_before, auc_after)
    assert auc_after > auc_before + 0.2
    assert hist["val_rows"] == 600 and hist["train_rows"] == 5400  # last 10% validates
    assert 1 <= hist["best_epoch"] <= hist["epochs_run"] <= SMALL.epochs
    assert hist["samples_per_s"] > 0
    assert (tmp_path / "training_loss.png").stat().st_size > 0
    assert (tmp_path / "history.json").exists()


def test_fit_is_deterministic():
    X, y, dims = planted(1000, seed=3)
    cfg = SMALL.with_(epochs=2)
    a, _ = fit_autoint(X, y, dims, cfg, verbose=0)
    b, _ = fit_autoint(X, y, dims, cfg, verbose=0)
    np.testing.assert_allclose(predict_proba(a, X[:50]), predict_proba(b, X[:50]), rtol=1e-5, atol=1e-6)


def tiny_catalogue():
    movies = pd.DataFrame({
        "movie_id": [30, 10, 20, 40],
        "title": ["c (1995)", "a (1990)", "b (1999)", "d (2000)"],
        "year": pd.array([1995, 1990, 1999, 2000], dtype="Int64"),
        "genres": [["Drama"], ["Comedy", "Drama"], ["Action", "Thriller", "War", "Drama"], ["Comedy"]],
    })
    users = pd.DataFrame({"user_id": [1, 2, 3], "gender": ["M", "F", "M"], "age": [25, 35, 18],
                          "occupation": [1, 2, 3], "zip": ["111", "222", "333"]})
    return users, movies


def test_shuffled_batches_cover_every_row_once_per_epoch_in_a_new_order():
    from recpipe.models.autoint.fit import ShuffledBatches

    X = np.arange(1003 * 2, dtype=np.int32).reshape(1003, 2)
    y = np.arange(1003, dtype=np.float32)
    batches = ShuffledBatches(X, y, 100, seed=3)
    assert len(batches) == 11

    def epoch():
        parts = [batches[i] for i in range(len(batches))]
        for xb, yb in parts:  # features and labels stay paired
            np.testing.assert_array_equal(xb[:, 0] // 2, yb)
        return np.concatenate([yb for _, yb in parts])

    first = epoch()
    batches.on_epoch_end()
    second = epoch()
    assert sorted(first) == sorted(second) == list(range(1003))  # every row once
    assert not np.array_equal(first, second)  # reshuffled
    again = ShuffledBatches(X, y, 100, seed=3)
    np.testing.assert_array_equal(np.concatenate([again[i][1] for i in range(11)]), first)  # seeded
    in_order = ShuffledBatches(X, y, 100, seed=None)
    np.testing.assert_array_equal(np.concatenate([in_order[i][1] for i in range(11)]), y)


def test_score_top_k_excludes_seen_and_ranks():
    from recpipe.features import FIELDS, FieldEncoders, derive_fields

    users, movies = tiny_catalogue()
    as_of = pd.Timestamp("2001-06-01", tz="UTC")
    events = pd.DataFrame([(u, m) for u in users.user_id for m in movies.movie_id], columns=["user_id", "movie_id"])
    events["rated_at"] = as_of
    frame = derive_fields(events, movies, users)
    enc = FieldEncoders().fit(frame)
    model = build_autoint(enc.field_dims, SMALL)
    seen = {1: {10, 40}, 2: [30], 3: set()}
    top = score_top_k(model, enc, users, movies, seen, as_of, k=2, chunk_users=2)
    assert list(top.columns) == ["user_id", "rank", "movie_id", "score"]
    assert top.groupby("user_id").size().to_dict() == {1: 2, 2: 2, 3: 2}
    for uid, g in top.groupby("user_id"):
        assert g["rank"].tolist() == [1, 2]
        assert not set(g["movie_id"]) & set(seen[uid])
        assert g["score"].is_monotonic_decreasing
    # the scores are the model's on the pairs derived by derive_fields
    p = predict_proba(model, enc.transform(frame))
    expected = frame.assign(score=p, user_id=events.user_id, movie_id=events.movie_id)
    expected = expected[~expected.apply(lambda r: r.movie_id in seen[r.user_id], axis=1)]
    expected = expected.sort_values(["user_id", "score", "movie_id"], ascending=[True, False, True])
    expected = expected.groupby("user_id").head(2)
    assert top["movie_id"].tolist() == expected["movie_id"].tolist()
    np.testing.assert_allclose(top["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-5)
    # user 1 has only 2 unseen movies: with k=3 it gets 2 rows
    top3 = score_top_k(model, enc, users, movies, seen, as_of, k=3)
    assert top3.groupby("user_id").size().to_dict() == {1: 2, 2: 3, 3: 3}


def test_score_top_k_tie_break_by_movie_id():
    from recpipe.features import FieldEncoders, derive_fields

    users, movies = tiny_catalogue()
    as_of = pd.Timestamp("2001-06-01", tz="UTC")
    events = pd.DataFrame({"user_id": [1, 2, 3, 1], "movie_id": [10, 20, 30, 40], "rated_at": as_of})
    enc = FieldEncoders().fit(derive_fields(events, movies, users))
    model = build_autoint(enc.field_dims, SMALL)
    for w in model.weights:  # all-zero weights: every score is exactly 0.5
        w.assign(np.zeros(w.shape, dtype=w.dtype))
    top = score_top_k(model, enc, users, movies, {}, as_of, k=4)
    assert (top["score"] == 0.5).all()
    assert top[top.user_id == 2]["movie_id"].tolist() == [10, 20, 30, 40]
