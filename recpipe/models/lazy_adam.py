"""Lazy Adam: Adam whose moments and weights move only on the rows a sparse gradient
touches (TensorFlow's IndexedSlices: an embedding lookup, a gather of output rows).

Keras 3's Adam densifies such a gradient (its moment decay touches every row), so each
update of a 60k-item table costs the whole table whatever the mini-batch used. Recommender
training commonly updates item tables lazily (TF1's LazyAdamOptimizer, PyTorch's
SparseAdam, the official GRU4Rec's sparse Adagrad): a row's moments wait, undecayed,
until the row is used again. Dense gradients (and every gradient on backends without
sparse ones: JAX, PyTorch) get Keras's own Adam step.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="recpipe")
class LazyAdam(keras.optimizers.Adam):
    """With `weight_decay` (AdamW's decoupled decay), a table with a sparse gradient
    decays only on the rows it updates, at their update: dense decay would again touch
    the whole table at every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdam does not implement amsgrad")
        self._lazy_keys: set = set()

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        self._lazy_keys = {self._var_key(v) for g, v in zip(grads, variables) if _is_sparse(g)}
        return super().apply(grads, trainable_variables)

    def _use_weight_decay(self, variable):
        # the dense decay pass skips the lazy tables; update_step decays their rows
        return self._var_key(variable) not in self._lazy_keys and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        rows = _sparse_rows(gradient)
        if rows is None:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        index, values = rows
        dtype = variable.dtype
        if self.weight_decay and super()._use_weight_decay(variable):
            decayed = ops.take(variable, index, axis=0) * (ops.cast(learning_rate, dtype) * ops.cast(self.weight_decay, dtype))
            self.assign_sub(variable, tf.IndexedSlices(decayed, index))
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        alpha = ops.cast(learning_rate, dtype) * ops.sqrt(1 - ops.power(beta_2, step)) / (1 - ops.power(beta_1, step))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m_rows = beta_1 * ops.take(m, index, axis=0) + (1 - beta_1) * values
        v_rows = beta_2 * ops.take(v, index, axis=0) + (1 - beta_2) * ops.square(values)
        self.assign(m, tf.IndexedSlices(m_rows, index))
        self.assign(v, tf.IndexedSlices(v_rows, index))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (ops.sqrt(v_rows) + self.epsilon), index))


def _is_sparse(gradient) -> bool:
    """Whether a gradient is row-sparse (a TensorFlow IndexedSlices; other backends give
    dense gradients)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(gradient, tf.IndexedSlices)


def _sparse_rows(gradient):
    """(unique row indices, summed row gradients) of a row-sparse gradient; None for a
    dense one."""
    if not _is_sparse(gradient):
        return None
    import tensorflow as tf

    index, position = tf.unique(gradient.indices)  # a row gathered twice gets one summed update
    return index, tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(index)[0])
