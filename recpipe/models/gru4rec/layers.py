"""GRU4Rec Keras 3 layers: a GRU cell with per-step session resets, item scores by row, the sampled losses."""
from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="recpipe")
class ResettableGRUCell(layers.Layer):
    """GRU cell (reset-after form) whose input is the precomputed input projection
    [z, r, h] (3 * units) plus one trailing reset flag; flag 1 zeroes the incoming
    state before the step (a session starts here)."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 3 * self.units), initializer="orthogonal", name="recurrent_kernel"
        )
        self.recurrent_bias = self.add_weight(
            shape=(3 * self.units,), initializer="zeros", name="recurrent_bias"
        )

    def call(self, inputs, states):
        h = states[0] if isinstance(states, (list, tuple)) else states
        u = self.units
        x = inputs[:, : 3 * u]
        keep = 1.0 - inputs[:, 3 * u :]
        h = h * keep
        hh = ops.matmul(h, self.recurrent_kernel) + self.recurrent_bias
        z = ops.sigmoid(x[:, :u] + hh[:, :u])
        r = ops.sigmoid(x[:, u : 2 * u] + hh[:, u : 2 * u])
        c = ops.tanh(x[:, 2 * u :] + r * hh[:, 2 * u :])
        h_new = z * h + (1.0 - z) * c
        return h_new, [h_new]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="recpipe")
class ItemScores(layers.Layer):
    """One item matrix E [items, dim] and bias b: `layer(items)` looks up E rows;
    `layer(h, score=True)` returns h @ E^T + b. The output layer of the sampled losses
    (a row per item: a mini-batch's gradient touches only its candidates' rows), and with
    tied=True also the input embedding (constrained embedding)."""

    def __init__(self, n_items: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.n_items, self.dim = n_items, dim

    def build(self, input_shape):
        self.embeddings = self.add_weight(shape=(self.n_items, self.dim), initializer="glorot_uniform",
                                          name="embeddings")
        self.bias = self.add_weight(shape=(self.n_items,), initializer="zeros", name="bias")

    def call(self, inputs, score=False):
        if score:
            return ops.matmul(inputs, ops.transpose(self.embeddings)) + self.bias
        return ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)

    def get_config(self):
        return {**super().get_config(), "n_items": self.n_items, "dim": self.dim}


@keras.saving.register_keras_serializable(package="recpipe")
class TiedItemScores(ItemScores):
    """ItemScores under the name tied bundles were saved with before it served untied ones."""


@keras.saving.register_keras_serializable(package="recpipe")
class SampledItemLoss(layers.Layer):
    """Per-position loss of the sampled objectives (training network only).

    Candidates of a mini-batch: the targets of all its N positions (in-batch negatives)
    plus `n_sample` extra items drawn by popularity**alpha, shared by every row, so one
    [N, N + n_sample] score matrix replaces the [N, items] full softmax. Row i's positive
    is column i. Masked out of the negatives: padding positions' columns and other copies
    of row i's target (a repeat of the positive is no negative).

    sampled_softmax: cross-entropy over the candidates, minus logq * log(sampling
    probability) per column (in-batch columns are drawn by popularity, extra ones by
    popularity**alpha), so the sampled softmax estimates the full one without its
    popularity bias. bpr_max: -log sum_j softmax_neg(s)_j sigmoid(s_i - s_j) plus
    bpreg * sum_j softmax_neg(s)_j s_j^2, after an optional ELU.

    Inputs: hidden [N, H], targets [N] int, weights [N] (0 for padding). The item output
    weights are the inference network's output layer, set as `scores_layer` (an
    ItemScores: a row per item) after construction: this layer lives only in the training network,
    which is never saved. `set_popularity(counts)` must be called before training.
    """

    def __init__(self, n_items: int, loss: str, n_sample: int, sample_alpha: float, logq: float = 0.0,
                 bpreg: float = 0.0, elu_param: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if loss not in ("sampled_softmax", "bpr_max"):
            raise ValueError(f"SampledItemLoss: unknown loss {loss!r}")
        self.n_items, self.loss, self.n_sample = n_items, loss, n_sample
        self.sample_alpha, self.logq, self.bpreg, self.elu_param, self.seed = sample_alpha, logq, bpreg, elu_param, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.scores_layer = None  # set by the network builder (shared output weights)

    def build(self, input_shape):
        # log popularity (in-batch sampling) and the CDF of popularity**alpha (extra samples)
        self.log_pop = self.add_weight(shape=(self.n_items,), initializer="zeros", trainable=False, name="log_pop")
        self.cdf = self.add_weight(shape=(self.n_items,), initializer="ones", trainable=False, name="cdf")

    def set_popularity(self, counts) -> None:
        import numpy as np

        counts = np.asarray(counts, dtype=np.float64) + 1.0  # every item can be drawn
        self.log_pop.assign(np.log(counts).astype("float32"))
        p = counts ** self.sample_alpha
        cdf = np.cumsum(p) / p.sum()
        cdf[-1] = 1.0
        self.cdf.assign(cdf.astype("float32"))

    def sample(self):
        u = keras.random.uniform((self.n_sample,), seed=self.seed_generator)
        idx = ops.searchsorted(self.cdf, u, side="right")
        return ops.cast(ops.minimum(idx, self.n_items - 1), "int32")

    def _output_rows(self, cand):
        sl = self.scores_layer
        return ops.take(sl.embeddings, cand, axis=0), ops.take(sl.bias, cand, axis=0)

    def call(self, hidden, targets, weights):
        targets = ops.cast(targets, "int32")
        n = ops.shape(targets)[0]
        extra = self.sample() if self.n_sample > 0 else None
        cand = targets if extra is None else ops.concatenate([targets, extra], axis=0)
        w, b = self._output_rows(cand)  # [C, H], [C]
        col_real = weights > 0 if extra is None else ops.concatenate([weights > 0, ops.ones_like(extra, "bool")], 0)
        # Every copy of row i's target, the positive (column i) included: no negative of row i.
        same = ops.equal(ops.expand_dims(targets, 1), ops.expand_dims(cand, 0))  # [N, C]
        if self.loss == "sampled_softmax":
            return self._sampled_softmax(hidden, w, b, targets, extra, same, col_real, n)
        return self._bpr_max(ops.matmul(hidden, ops.transpose(w)) + b, same, col_real, n)

    def _sampled_softmax(self, hidden, w, b, targets, extra, same, col_real, n):
        if self.logq > 0:  # per column: fold the correction into the bias, one [C] vector
            logq = ops.take(self.log_pop, targets, axis=0)
            if extra is not None:
                logq = ops.concatenate([logq, self.sample_alpha * ops.take(self.log_pop, extra, axis=0)], axis=0)
            b = b - self.logq * logq
        scores = ops.matmul(hidden, ops.transpose(w)) + b  # [N, C]
        pos = ops.sum(hidden * w[:n], axis=1) + b[:n]  # column i of row i, without an [N, C] mask
        # The negatives' log-sum-exp with the positive added back: a few [N, C] passes
        # fewer than masking the diagonal apart (the loss layer was most of a step).
        hidden_cols = ops.logical_or(same, ops.logical_not(ops.expand_dims(col_real, 0)))
        negatives = ops.logsumexp(ops.where(hidden_cols, -1e9, scores), axis=1)
        return ops.logaddexp(negatives, pos) - pos

    def _bpr_max(self, scores, same, col_real, n):
        c = ops.shape(same)[1]
        eye = ops.equal(ops.expand_dims(ops.arange(n), 1), ops.expand_dims(ops.arange(c), 0))
        negative = ops.logical_and(ops.expand_dims(col_real, 0), ops.logical_not(same))
        if self.elu_param > 0:
            scores = ops.where(scores > 0, scores, self.elu_param * (ops.exp(ops.minimum(scores, 0.0)) - 1.0))
        pos = ops.sum(ops.where(eye, scores, ops.zeros_like(scores)), axis=1)
        neg_logits = ops.where(negative, scores, ops.full_like(scores, -1e9))
        soft = ops.softmax(neg_logits, axis=1) * ops.cast(negative, scores.dtype)
        diff = ops.sigmoid(ops.expand_dims(pos, 1) - scores)
        loss = -ops.log(ops.sum(diff * soft, axis=1) + 1e-24)
        return loss + self.bpreg * ops.sum(soft * ops.square(scores), axis=1)

    def get_config(self):
        return {**super().get_config(), "n_items": self.n_items, "loss": self.loss, "n_sample": self.n_sample,
                "sample_alpha": self.sample_alpha, "logq": self.logq, "bpreg": self.bpreg,
                "elu_param": self.elu_param, "seed": self.seed}
