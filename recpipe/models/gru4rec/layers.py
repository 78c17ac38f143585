"""GRU4Rec Keras 3 layers: a GRU cell with per-step session resets, tied item scores."""
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
class TiedItemScores(layers.Layer):
    """One item matrix E [items, dim] and bias b: `layer(items)` looks up E rows;
    `layer(h, score=True)` returns h @ E^T + b (constrained embedding)."""

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

