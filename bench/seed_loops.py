"""The seed notebooks' training loops, re-implemented from their text for timing.

Written fresh from /work/shared/seeds/000_*.txt (AutoInt+) and 002_*.txt (GRU4Rec),
keeping what decides their speed and their quirks, so that `bench/seed_compare.py`
can time them beside recpipe's models in the same process on the same data.

GRU4Rec, seed 002 (`seed002_model`, `seed002_train_steps`):
- input: a one-hot vector of the whole training catalogue per event, built with
  `to_categorical` in numpy at every step, shape (lanes, 1, n_items);
- Keras `GRU(hidden, stateful=True)` -> Dropout -> Dense(n_items, softmax),
  categorical cross-entropy on one-hot targets, Adam, metric accuracy;
- session-parallel mini-batches: `lanes` sessions side by side, one event each per
  step; a lane whose session ends takes the next session; the loader yields the lanes
  to reset, and before each step the GRU's state is read to numpy, those rows are
  zeroed in a Python loop and the state written back;
- one `train_on_batch` per step from a Python loop.
The notebook ran Keras 2 (`reset_states(states=...)`); Keras 3 has no such argument,
so the state is written with `assign`, which does the same copy.

AutoInt+, seed 000 (`seed000_model`, `seed000_fit`):
- FeaturesEmbedding (one table, per-field offsets), MultiHeadSelfAttention with
  tf.Variable projections, ReLU after the residual sum, AutoIntMLP adding a ReLU'd
  attention logit and an MLP whose 1-unit output layer also gets ReLU and dropout;
- AdamW(weight_decay 1e-5) on ExponentialDecay(lr, 100, 0.96), binary cross-entropy,
  metric binary_crossentropy, `model.fit(DataFrame, Series, validation_split=0.1)`.
Quirk kept as the notebook has it: its progress bars are Keras 3's, and Keras 3 does
not track raw `tf.Variable` attributes of a layer, so the four attention projection
matrices of every interacting layer are never trained (no gradient is computed for
them, which makes the seed's step cheaper than a correct AutoInt+'s).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

SEED002 = {"lanes": 128, "hidden": 64, "dropout": 0.1, "learning_rate": 1e-3}
SEED000 = {"embed_dim": 32, "att_layers": 3, "att_heads": 2, "dnn_units": (32, 32), "dropout": 0.3,
           "l2_dnn": 1e-3, "learning_rate": 1e-4, "decay_steps": 100, "decay_rate": 0.96, "weight_decay": 1e-5,
           "batch_size": 2048, "init_std": 1e-4}


# ============================================================================ GRU4Rec
def seed002_frame(train_events: pd.DataFrame) -> pd.DataFrame:
    """recpipe's train sessions in the notebook's layout: UserId, ItemId, Time,
    SessionId (0..n-1, contiguous, in order) and item_idx (index by first appearance)."""
    df = train_events.sort_values(["session_id", "ts", "line_no"], kind="stable")
    df = pd.DataFrame({"UserId": df["user_id"].to_numpy(), "ItemId": df["movie_id"].to_numpy(),
                       "Time": df["ts"].to_numpy(), "SessionId": df["session_id"].to_numpy()})
    df["SessionId"] = pd.factorize(df["SessionId"])[0]
    id2idx = {item: k for k, item in enumerate(df["ItemId"].unique())}
    df["item_idx"] = df["ItemId"].map(lambda x: id2idx.get(x, -1))
    return df


class SessionLoader:
    """The notebook's session-parallel loader: yields (inputs, targets, lanes to reset)."""

    def __init__(self, df: pd.DataFrame, lanes: int):
        self.df, self.lanes = df, lanes
        self.offsets = np.zeros(df["SessionId"].nunique() + 1, dtype=np.int32)
        self.offsets[1:] = df.groupby("SessionId").size().cumsum()
        self.sessions = np.arange(df["SessionId"].nunique())

    def __iter__(self):
        first = np.arange(self.lanes)
        last = self.lanes - 1
        start = self.offsets[self.sessions[first]]
        end = self.offsets[self.sessions[first] + 1]
        mask = np.array([], dtype=np.int64)
        finished = False
        while not finished:
            shortest = (end - start).min() - 1
            for i in range(shortest):
                # As the notebook: the column is fetched from the frame at every step.
                yield self.df["item_idx"].values[start + i], self.df["item_idx"].values[start + i + 1], mask
            start = start + shortest
            mask = np.arange(self.lanes)[(end - start) == 1]
            for k, lane in enumerate(mask, start=1):
                new = last + k
                if new > self.sessions[-1]:
                    finished = True
                    break
                start[lane] = self.offsets[self.sessions[new]]
                end[lane] = self.offsets[self.sessions[new] + 1]
            last += len(mask)


def seed002_model(n_items: int, lanes: int = SEED002["lanes"], hidden: int = SEED002["hidden"],
                  dropout: float = SEED002["dropout"], learning_rate: float = SEED002["learning_rate"]):
    import keras

    inputs = keras.Input(batch_shape=(lanes, 1, n_items))
    gru, _ = keras.layers.GRU(hidden, stateful=True, return_state=True, name="GRU")(inputs)
    drop = keras.layers.Dropout(dropout)(gru)
    predictions = keras.layers.Dense(n_items, activation="softmax")(drop)
    model = keras.Model(inputs=inputs, outputs=[predictions], name=f"m_b{lanes}_h{hidden}")
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=keras.optimizers.Adam(learning_rate),
                  metrics=["accuracy"])
    return model


def _reset_hidden_states(model, mask) -> None:
    gru = model.get_layer(name="GRU")
    hidden = gru.states[0].numpy()
    for lane in mask:
        hidden[lane, :] = 0
    gru.states[0].assign(hidden)


def seed002_train_steps(train_events: pd.DataFrame, steps: int, warmup: int = 20, seed: int = 42,
                        lanes: int = SEED002["lanes"], hidden: int = SEED002["hidden"]) -> dict:
    """Run the seed's loop for `warmup` + `steps` steps of its first epoch (or the whole
    epoch if shorter). Events/s counts `lanes` events per step (every lane trains on
    one next-item event per step, as in the notebook). Model set-up is not timed."""
    import keras

    keras.utils.set_random_seed(seed)
    df = seed002_frame(train_events)
    n_items = int(df["ItemId"].nunique())
    model = seed002_model(n_items, lanes, hidden)
    epoch_steps = (len(df) - df["SessionId"].nunique()) // lanes  # the notebook's progress-bar total
    done = 0
    times, cpu = [], []
    loss = float("nan")
    started = time.perf_counter()
    for feat, target, mask in SessionLoader(df, lanes):
        _reset_hidden_states(model, mask)
        x = np.expand_dims(keras.utils.to_categorical(feat, num_classes=n_items), axis=1)
        y = keras.utils.to_categorical(target, num_classes=n_items)
        loss = model.train_on_batch(x, y)[0]
        times.append(time.perf_counter())
        cpu.append(time.process_time())
        done += 1
        if done >= warmup + steps:
            break
    first = max(0, min(warmup, len(times) - 1) - 1)
    measured = times[-1] - times[first] if done > warmup else float("nan")
    cpu_measured = cpu[-1] - cpu[first] if done > warmup else float("nan")
    total = times[-1] - started
    return {
        "n_items": n_items, "lanes": lanes, "hidden": hidden, "epoch_steps": int(epoch_steps),
        "steps_run": done, "warmup_steps": min(warmup, done), "measured_steps": max(0, done - warmup),
        "seconds_measured": measured, "seconds_with_warmup": total,
        "steps_per_s": (done - warmup) / measured if done > warmup else float("nan"),
        "events_per_s": (done - warmup) * lanes / measured if done > warmup else float("nan"),
        "events_per_s_with_warmup": done * lanes / total,
        # CPU seconds of this process (all its threads): less sensitive to other jobs' load.
        "cpu_seconds_measured": cpu_measured,
        "events_per_cpu_s": (done - warmup) * lanes / cpu_measured if done > warmup else float("nan"),
        "last_loss": float(loss),
    }


# ============================================================================ AutoInt+
def _seed000_layers(train_attention: bool = False):
    """The notebook's layer classes (defined lazily: they need TensorFlow).
    train_attention=True makes the attention projections Keras weights (trained): not
    the notebook, a probe of what its untrained projections save."""
    import keras
    import tensorflow as tf

    class FeaturesEmbedding(keras.layers.Layer):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)
            self.embedding = keras.layers.Embedding(int(sum(field_dims)), embed_dim,
                                                    embeddings_initializer="glorot_uniform")

        def call(self, x):
            x = x + tf.constant(self.offsets, dtype=x.dtype)
            return self.embedding(x)

    class MultiLayerPerceptron(keras.layers.Layer):
        def __init__(self, inputs_dim, hidden_units, l2_reg=0.0, dropout_rate=0.0, init_std=1e-4,
                     output_layer=True):
            super().__init__()
            units = [inputs_dim] + list(hidden_units) + ([1] if output_layer else [])
            self.layers = []
            for i in range(len(units) - 1):
                # The output unit too gets ReLU and dropout (a notebook quirk kept here).
                self.layers.append(keras.layers.Dense(
                    units[i + 1], kernel_initializer=keras.initializers.RandomNormal(0.0, init_std),
                    kernel_regularizer=keras.regularizers.l2(l2_reg)))
                self.layers.append(keras.layers.Activation("relu"))
                self.layers.append(keras.layers.Dropout(dropout_rate))

        def call(self, inputs, training=False):
            x = inputs
            for layer in self.layers:
                x = layer(x, training=training)
            return x

    class MultiHeadSelfAttention(keras.layers.Layer):
        def __init__(self, embedding_size, head_num=2, use_res=True, scaling=False):
            super().__init__()
            self.att_embedding_size = embedding_size // head_num
            self.head_num, self.use_res, self.scaling = head_num, use_res, scaling
            names = ["W_Query", "W_Key", "W_Value"] + (["W_Res"] if use_res else [])
            for name in names:
                if train_attention:
                    var = self.add_weight(shape=(embedding_size, embedding_size), name=name,
                                          initializer=keras.initializers.RandomNormal(0.0, 0.05))
                else:  # raw tf.Variables, as in the notebook: Keras 3 does not train them
                    var = tf.Variable(tf.random.normal((embedding_size, embedding_size), stddev=0.05), name=name)
                setattr(self, name, var)

        def call(self, inputs):
            querys = tf.tensordot(inputs, self.W_Query, axes=1)
            keys = tf.tensordot(inputs, self.W_Key, axes=1)
            values = tf.tensordot(inputs, self.W_Value, axes=1)
            querys = tf.stack(tf.split(querys, self.head_num, axis=-1))
            keys = tf.stack(tf.split(keys, self.head_num, axis=-1))
            values = tf.stack(tf.split(values, self.head_num, axis=-1))
            inner = tf.einsum("bnik,bnjk->bnij", querys, keys)
            if self.scaling:
                inner /= tf.sqrt(float(self.att_embedding_size))
            scores = tf.nn.softmax(inner, axis=-1)
            result = tf.concat(tf.unstack(tf.matmul(scores, values)), axis=-1)
            if self.use_res:
                result += tf.tensordot(inputs, self.W_Res, axes=1)
            return tf.nn.relu(result)

    class AutoIntMLP(keras.layers.Layer):
        def __init__(self, field_dims, embedding_size, att_layer_num, att_head_num, dnn_hidden_units,
                     l2_reg_dnn, dnn_dropout, init_std):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embedding_size)
            self.flat_dim = len(field_dims) * embedding_size
            self.dnn_linear = keras.layers.Dense(1, use_bias=False,
                                                 kernel_initializer=keras.initializers.RandomNormal(0.0, init_std))
            self.dnn = MultiLayerPerceptron(self.flat_dim, dnn_hidden_units, l2_reg=l2_reg_dnn,
                                            dropout_rate=dnn_dropout, init_std=init_std)
            self.int_layers = [MultiHeadSelfAttention(embedding_size, head_num=att_head_num, use_res=True)
                               for _ in range(att_layer_num)]

        def call(self, X, training=False):
            embed_x = self.embedding(X)
            att = embed_x
            for layer in self.int_layers:
                att = layer(att)
            att_out = tf.nn.relu(self.dnn_linear(tf.reshape(att, [-1, self.flat_dim])))  # ReLU'd logit
            dnn_out = self.dnn(tf.reshape(embed_x, [-1, self.flat_dim]), training=training)
            return tf.sigmoid(att_out + dnn_out)

    class AutoIntMLPModel(keras.Model):
        def __init__(self, field_dims, **kwargs):
            super().__init__()
            self.autoInt_mlp_layer = AutoIntMLP(field_dims, **kwargs)

        def call(self, inputs, training=False):
            return self.autoInt_mlp_layer(inputs, training=training)

    return AutoIntMLPModel


def seed000_model(field_dims, cfg: dict = SEED000, train_attention: bool = False):
    import keras
    import tensorflow as tf

    model_cls = _seed000_layers(train_attention)
    model = model_cls(
        [int(d) for d in field_dims], embedding_size=cfg["embed_dim"], att_layer_num=cfg["att_layers"],
        att_head_num=cfg["att_heads"], dnn_hidden_units=cfg["dnn_units"], l2_reg_dnn=cfg["l2_dnn"],
        dnn_dropout=cfg["dropout"], init_std=cfg["init_std"],
    )
    schedule = keras.optimizers.schedules.ExponentialDecay(cfg["learning_rate"], decay_steps=cfg["decay_steps"],
                                                           decay_rate=cfg["decay_rate"])
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg["weight_decay"]),
                  loss=keras.losses.BinaryCrossentropy(from_logits=False), metrics=["binary_crossentropy"])
    tf.random.set_seed(0)
    return model


def seed000_fit(X: np.ndarray, y: np.ndarray, field_dims, epochs: int, columns: list[str],
                cfg: dict = SEED000, seed: int = 42, train_attention: bool = False) -> dict:
    """The notebook's `model.fit(train_df[features], train_df[label], validation_split=0.1)`.
    samples/s = all rows (train + validation) x epochs / fit seconds, as fit_autoint reports."""
    import keras

    keras.utils.set_random_seed(seed)
    model = seed000_model(field_dims, cfg, train_attention)
    features = pd.DataFrame(np.asarray(X, dtype=np.int32), columns=columns)
    label = pd.Series(np.asarray(y, dtype=np.float32), name="label")
    started, cpu = time.perf_counter(), time.process_time()
    hist = model.fit(features, label, epochs=epochs, batch_size=cfg["batch_size"], validation_split=0.1, verbose=0)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    trained = {w.path if hasattr(w, "path") else w.name for w in model.trainable_weights}
    return {
        "rows": int(len(X)), "epochs": int(epochs), "batch_size": cfg["batch_size"], "fit_seconds": seconds,
        "samples_per_s": len(X) * epochs / seconds, "cpu_seconds": cpu,
        "samples_per_cpu_s": len(X) * epochs / cpu, "loss": [float(v) for v in hist.history["loss"]],
        "val_loss": [float(v) for v in hist.history.get("val_loss", [])],
        "trainable_weight_count": len(model.trainable_weights),
        "attention_projections_trained": any("W_Query" in str(n) for n in trained),
    }
