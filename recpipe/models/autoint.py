"""AutoInt+ (AutoInt with a parallel DNN) as small serializable Keras 3 layers.

Model: the 14 field codes (int32, 0 = unknown) -> one shared embedding table with
per-field offsets -> `att_layers` interacting layers (multi-head self-attention over
the fields, residual projection, ReLU, optional layer norm) -> flatten -> 1 logit;
in parallel a DNN tower over the flattened embeddings -> 1 logit. The probability is
sigmoid(attention logit + DNN logit). Unlike seed 000 there is no ReLU and no dropout
on either logit, so the model can predict below 0.5 and its log-loss is meaningful.

Everything uses `keras.ops`, so the model also runs under KERAS_BACKEND=jax.

How DEFAULT_CONFIG was chosen: see the comment above DEFAULT_CONFIG.

"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import keras
import numpy as np
import pandas as pd
from keras import ops

PACKAGE = "recpipe"


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoIntConfig:
    """Every hyperparameter of AutoInt+ and of its training."""

    embed_dim: int = 32
    att_layers: int = 3
    att_heads: int = 2
    att_res: bool = True
    att_scaling: bool = False
    layer_norm: bool = False
    dnn_units: tuple[int, ...] = (32, 32)
    dropout: float = 0.3  # inside the DNN tower only, never on the logit
    l2_dnn: float = 1e-3  # l2 on the DNN tower's kernels (hidden layers and logit)
    l2_embedding: float = 0.0  # l2 on the embedding rows looked up in a batch
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5  # AdamW decoupled weight decay; 0 -> plain Adam
    decay_steps: int = 100  # ExponentialDecay of the learning rate; 0 -> constant
    decay_rate: float = 0.96
    batch_size: int = 2048
    epochs: int = 10
    patience: int = 10  # EarlyStopping on val loss (best weights restored)
    val_fraction: float = 0.1  # last rows of X when no X_val is given
    seed: int = 42

    def __post_init__(self):
        object.__setattr__(self, "dnn_units", tuple(int(u) for u in self.dnn_units))
        if self.embed_dim % self.att_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of att_heads {self.att_heads}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dnn_units"] = list(self.dnn_units)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoIntConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AutoIntConfig keys: {sorted(unknown)}")
        return cls(**dict(data))

    def with_(self, **changes) -> "AutoIntConfig":
        return replace(self, **changes)


# Seed 000's best run (its cell with NDCG 0.65974 / "hitrate" 0.62713): embedding 32,
# 3 interacting layers x 2 heads with residual, DNN (32, 32), dropout 0.3, l2 1e-3 on the
# DNN, AdamW(lr 1e-4, weight decay 1e-5) with ExponentialDecay(100 steps, 0.96), batch
# 2048, 10 epochs. Its head bug is not reproduced (see module docstring). patience=10
# means no early stop within 10 epochs (the seed had none); the best epoch is restored.
SEED000_CONFIG = AutoIntConfig()

# DEFAULT_CONFIG: chosen by a small search on seed 000's split, selecting on the
# validation part only (last 10% of the 80% train part; the 20% test part was not looked
# at while choosing). The search ran on a borrowed H100 under KERAS_BACKEND=torch (same
# code, keras.ops), 10 epochs max, EarlyStopping(patience 2); figures are val AUC /
# val log-loss:
#   SEED000_CONFIG                                   0.794 / 0.539 (still improving at
#       epoch 10: its lr 1e-4 decays x0.96 per 100 steps, to 2.4e-5 by the end)
#   lr 2e-3, ExponentialDecay(400, 0.9), att_scaling, DNN (64, 32), dropout 0.2,
#       l2_dnn 1e-5, l2_embedding 1e-6  ("base")        0.819 / 0.511
#   base, constant lr 1e-3                           0.818 / 0.511
#   base, embed 16                                   0.817 / 0.511
#   base, DNN (128, 64)                              0.819 / 0.510
#   base, DNN (256, 128), dropout 0.3  ("A")         0.820 / 0.509
#   A + l2_embedding 1e-5                            0.820 / 0.509
#   A + layer_norm                                   0.813 / 0.518
#   A, 2 interacting layers                          0.820 / 0.509  <- chosen
#   A, batch 4096, lr 4e-3                           0.819 / 0.510
#   A, embed 16                                      0.820 / 0.509
#   A, weight decay 1e-4                             0.820 / 0.509
# The learning rate is what matters (the seed's decays to nothing); the rest is within
# noise, so the cheaper of the best (2 interacting layers instead of 3) was chosen.
# Caveat: the same code and config score lower under TensorFlow on CPU than under torch
# (seed-000 test split: AUC 0.802 / log-loss 0.530 / NDCG 0.672 on TF vs 0.815 / 0.516 /
# 0.678 on torch; SEED000_CONFIG's curves match across the two). Not yet explained.
DEFAULT_CONFIG = AutoIntConfig(
    embed_dim=32,
    att_layers=2,
    att_heads=2,
    att_res=True,
    att_scaling=True,
    layer_norm=False,
    dnn_units=(256, 128),
    dropout=0.3,
    l2_dnn=1e-5,
    l2_embedding=1e-6,
    learning_rate=2e-3,
    weight_decay=1e-5,
    decay_steps=400,
    decay_rate=0.9,
    batch_size=2048,
    epochs=10,
    patience=2,
)


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class FieldEmbedding(keras.layers.Layer):
    """(batch, fields) int codes -> (batch, fields, embed_dim) from one shared table.

    Field f's codes 0..field_dims[f]-1 map to rows offsets[f] + code. `l2` adds
    l2 * sum(squared looked-up rows) / batch to the loss (the rows actually used, as in
    DeepCTR), not l2 on the whole table.
    """

    def __init__(self, field_dims, embed_dim, l2=0.0, embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.field_dims = [int(d) for d in field_dims]
        self.embed_dim = int(embed_dim)
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.offsets = np.concatenate([[0], np.cumsum(self.field_dims)[:-1]]).astype("int32")

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(int(sum(self.field_dims)), self.embed_dim),
            initializer=self.embeddings_initializer,
        )

    def call(self, inputs):
        idx = ops.cast(inputs, "int32") + ops.convert_to_tensor(self.offsets, dtype="int32")
        out = ops.take(self.embeddings, idx, axis=0)
        if self.l2 > 0:
            batch = ops.cast(ops.shape(out)[0], out.dtype)
            self.add_loss(self.l2 * ops.sum(ops.square(out)) / batch)
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.embed_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "field_dims": self.field_dims,
            "embed_dim": self.embed_dim,
            "l2": self.l2,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class InteractingLayer(keras.layers.Layer):
    """Multi-head self-attention over fields (AutoInt's interacting layer).

    (batch, fields, d_in) -> (batch, fields, heads * head_dim). Q, K, V and the residual
    projection are one fused (d_in, 4 * heads * head_dim) matmul; the attention uses
    einsum over (batch, heads) without transposes. Output = ReLU(attention + x W_res),
    then LayerNorm when `layer_norm`.
    """

    def __init__(self, head_dim, heads=2, use_res=True, scaling=False, layer_norm=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if heads <= 0 or head_dim <= 0:
            raise ValueError("heads and head_dim must be positive")
        self.head_dim = int(head_dim)
        self.heads = int(heads)
        self.use_res = bool(use_res)
        self.scaling = bool(scaling)
        self.layer_norm = bool(layer_norm)
        self.seed = seed
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm") if self.layer_norm else None

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"InteractingLayer expects (batch, fields, dim), got {input_shape}")
        d_in = int(input_shape[-1])
        width = self.heads * self.head_dim
        n_proj = 4 if self.use_res else 3
        self.kernel = self.add_weight(
            name="kernel",
            shape=(d_in, n_proj * width),
            initializer=keras.initializers.TruncatedNormal(stddev=0.05, seed=self.seed),
        )
        if self.norm is not None:
            self.norm.build((*input_shape[:-1], width))

    def call(self, inputs):
        width, hd = self.heads * self.head_dim, self.head_dim
        n_fields, d_in = inputs.shape[1], inputs.shape[-1]
        # Plain 2-D matmuls on (batch*fields, d_in) and one small batched matmul per
        # head: no transposes of activations (measured ~3x faster on CPU than a fused
        # projection followed by head-splitting einsums).
        x2 = ops.reshape(inputs, (-1, d_in))

        def project(col):
            return ops.reshape(ops.matmul(x2, self.kernel[:, col : col + hd]), (-1, n_fields, hd))

        heads = []
        for h in range(self.heads):
            q, k, v = project(h * hd), project(width + h * hd), project(2 * width + h * hd)
            scores = ops.matmul(q, ops.transpose(k, (0, 2, 1)))  # (b, f, f)
            if self.scaling:
                scores = scores / math.sqrt(hd)
            heads.append(ops.matmul(ops.softmax(scores, axis=-1), v))
        out = heads[0] if self.heads == 1 else ops.concatenate(heads, axis=-1)
        if self.use_res:
            out = out + ops.reshape(ops.matmul(x2, self.kernel[:, 3 * width :]), (-1, n_fields, width))
        out = ops.relu(out)
        if self.norm is not None:
            out = self.norm(out)
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.heads * self.head_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "head_dim": self.head_dim,
            "heads": self.heads,
            "use_res": self.use_res,
            "scaling": self.scaling,
            "layer_norm": self.layer_norm,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DNNTower(keras.layers.Layer):
    """Dense -> ReLU -> Dropout per hidden layer, then a linear 1-unit logit.

    l2 applies to every kernel (hidden and logit). No activation and no dropout on the
    logit (seed 000 had both, which pinned its predictions at >= 0.5).
    """

    def __init__(self, units=(32, 32), dropout=0.0, l2=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.dropout = float(dropout)
        self.l2 = float(l2)
        self.seed = seed
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.hidden = [
            keras.layers.Dense(u, activation="relu", kernel_regularizer=reg, name=f"dense_{i}")
            for i, u in enumerate(self.units)
        ]
        self.drops = [
            keras.layers.Dropout(self.dropout, seed=None if seed is None else seed + i, name=f"dropout_{i}")
            for i in range(len(self.units))
        ]
        self.logit = keras.layers.Dense(1, kernel_regularizer=reg, name="logit")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense in self.hidden:
            dense.build(shape)
            shape = (*shape[:-1], dense.units)
        self.logit.build(shape)

    def call(self, inputs, training=None):
        x = inputs
        for dense, drop in zip(self.hidden, self.drops):
            x = dense(x)
            if self.dropout > 0:
                x = drop(x, training=training)
        return self.logit(x)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout, "l2": self.l2, "seed": self.seed}


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
def build_autoint(field_dims: Iterable[int], config: AutoIntConfig = SEED000_CONFIG) -> keras.Model:
    """int32 (None, n_fields) codes -> probability (None, 1). Not compiled."""
    field_dims = [int(d) for d in field_dims]
    n_fields = len(field_dims)
    c = config
    inputs = keras.Input(shape=(n_fields,), dtype="int32", name="fields")
    emb = FieldEmbedding(field_dims, c.embed_dim, l2=c.l2_embedding, name="embedding")(inputs)
    att = emb
    head_dim = c.embed_dim // c.att_heads
    for i in range(c.att_layers):
        att = InteractingLayer(
            head_dim, heads=c.att_heads, use_res=c.att_res, scaling=c.att_scaling,
            layer_norm=c.layer_norm, seed=c.seed + 100 + i, name=f"interacting_{i}",
        )(att)
    flat_att = keras.layers.Flatten(name="flatten_att")(att)
    att_logit = keras.layers.Dense(1, use_bias=False, name="att_logit")(flat_att)
    flat_emb = keras.layers.Flatten(name="flatten_emb")(emb)
    dnn_logit = DNNTower(c.dnn_units, dropout=c.dropout, l2=c.l2_dnn, seed=c.seed + 200, name="dnn")(flat_emb)
    logit = keras.layers.Add(name="logit")([att_logit, dnn_logit])
    prob = keras.layers.Activation("sigmoid", dtype="float32", name="probability")(logit)
    return keras.Model(inputs, prob, name="autoint_plus")


def _optimizer(config: AutoIntConfig) -> keras.optimizers.Optimizer:
    lr: Any = config.learning_rate
    if config.decay_steps and config.decay_rate != 1.0:
        lr = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=config.decay_steps, decay_rate=config.decay_rate
        )
    if config.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def compile_autoint(model: keras.Model, config: AutoIntConfig, jit_compile: Any = "auto", auc: bool = True,
                    steps_per_execution: int = 1) -> keras.Model:
    model.compile(
        optimizer=_optimizer(config),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc", num_thresholds=200)] if auc else None,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def _save_curves(history: dict[str, list[float]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in ("loss", "auc"):
        if metric not in history:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = np.arange(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"AutoInt+ {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"training_{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def fit_autoint(
    X: np.ndarray,
    y: np.ndarray,
    field_dims: Iterable[int],
    config: AutoIntConfig = SEED000_CONFIG,
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    out_dir: str | Path | None = None,
    verbose: int | str = "auto",
    jit_compile: Any = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train AutoInt+ on int32 codes X (n, n_fields) and 0/1 labels y.

    Without X_val the LAST `val_fraction` of the rows validate (sort by time before
    calling for a temporal validation). Seeds fixed by `config.seed`; EarlyStopping on
    val loss with the best weights restored. Returns (model, history) where history
    holds the per-epoch curves plus `best_epoch` (1-based), `epochs_run`, `fit_seconds`,
    `train_rows`, `val_rows`, `samples_per_s` ((train+val rows) x epochs / fit seconds)
    and `train_samples_per_s` (train rows only). With out_dir, the curves are saved
    there as training_loss.png / training_auc.png and the history as history.json.
    """
    X = np.ascontiguousarray(X, dtype=np.int32)
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if X_val is None:
        n_val = int(round(len(X) * config.val_fraction))
        if n_val > 0:
            X, X_val, y, y_val = X[:-n_val], X[-n_val:], y[:-n_val], y[-n_val:]
    if X_val is not None:
        X_val = np.ascontiguousarray(X_val, dtype=np.int32)
        y_val = np.asarray(y_val, dtype=np.float32).reshape(-1)
    if jit_compile is None:
        # TensorFlow on CPU: XLA measured ~35% slower than graph mode for this model;
        # JAX needs jit to be fast at all.
        jit_compile = False if keras.backend.backend() == "tensorflow" else "auto"
    keras.utils.set_random_seed(config.seed)
    model = compile_autoint(build_autoint(field_dims, config), config, jit_compile=jit_compile)
    callbacks = []
    monitor = "val_loss" if X_val is not None else "loss"
    callbacks.append(
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True)
    )
    started = time.perf_counter()
    hist = model.fit(
        X, y,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(X_val, y_val) if X_val is not None else None,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    history: dict[str, Any] = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    n_val_rows = 0 if X_val is None else len(X_val)
    history.update(
        best_epoch=int(np.argmin(history[monitor])) + 1 if epochs_run else 0,
        epochs_run=epochs_run,
        fit_seconds=seconds,
        train_rows=len(X),
        val_rows=n_val_rows,
        samples_per_s=(len(X) + n_val_rows) * epochs_run / seconds if seconds > 0 else float("nan"),
        train_samples_per_s=len(X) * epochs_run / seconds if seconds > 0 else float("nan"),
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _save_curves(history, out)
        (out / "history.json").write_text(json.dumps({"config": config.to_dict(), **history}, indent=2))
    return model, history


def predict_proba(model: keras.Model, X: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Probabilities as float32 (n,)."""
    X = np.ascontiguousarray(X, dtype=np.int32)
    if len(X) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.asarray(model.predict(X, batch_size=batch_size, verbose=0), dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------------------------------
# Top-k scoring of the catalogue
# ---------------------------------------------------------------------------------------
def _field_codes(encoders, partial: pd.DataFrame, owned: list[str]) -> np.ndarray:
    """Codes of the `owned` fields of `partial` (other fields 0)."""
    from recpipe.features import FIELDS

    frame = pd.DataFrame({name: partial[name] if name in owned else None for name in FIELDS}, index=partial.index)
    codes = encoders.transform(frame)
    mask = np.array([name in owned for name in FIELDS])
    codes[:, ~mask] = 0
    return codes


def score_top_k(
    model: keras.Model,
    encoders,
    users_frame: pd.DataFrame,
    movies_frame: pd.DataFrame,
    seen: Mapping[int, Iterable[int]] | None,
    as_of,
    k: int = 10,
    chunk_users: int = 256,
    batch_size: int = 65536,
) -> pd.DataFrame:
    """Top-k unseen movies for every user, as DataFrame[user_id, rank, movie_id, score].

    users_frame: users.dat-like rows (user_id, gender, age, occupation, zip); movies_frame:
    movies.dat-like rows (movie_id, title, year, genres). `seen` maps user_id -> the
    movie_ids that user rated before `as_of` (any iterable; users absent = nothing
    seen); those pairs are never recommended. The rating-time fields come from `as_of`
    (the scoring date). User fields are encoded once per user, movie fields once per
    movie, and pair codes are their broadcast sum, scored `chunk_users` users at a time
    (memory ~ chunk_users x n_movies x 14 x 4 bytes). rank is 1-based; ties broken by
    score desc then movie_id asc. Users with fewer than k unseen movies get fewer rows.
    """
    from recpipe.features import movie_fields, time_fields, user_fields

    movies_frame = movies_frame.drop_duplicates("movie_id").sort_values("movie_id", kind="stable")
    users_frame = users_frame.drop_duplicates("user_id")
    movie_ids = movies_frame["movie_id"].to_numpy(np.int64)
    user_ids = users_frame["user_id"].to_numpy(np.int64)

    mf = movie_fields(movies_frame).reset_index(drop=True)
    mf["movie_id"] = mf["movie_id"].astype(str).astype(object)
    tf_ = time_fields(pd.Series([pd.Timestamp(as_of)] * len(mf), index=mf.index))
    mf = pd.concat([mf, tf_], axis=1)
    movie_codes = _field_codes(
        encoders, mf,
        ["movie_id", "movie_decade", "movie_year", "genre1", "genre2", "genre3",
         "rating_year", "rating_month", "rating_decade"],
    )
    uf = user_fields(users_frame).reset_index(drop=True)
    uf["user_id"] = uf["user_id"].astype(str).astype(object)
    user_codes = _field_codes(encoders, uf, ["user_id", "gender", "age", "occupation", "zip"])

    movie_pos = pd.Index(movie_ids)
    n_movies = len(movie_ids)
    k_eff = min(k, n_movies)
    out_users, out_ranks, out_movies, out_scores = [], [], [], []
    seen = seen or {}
    for start in range(0, len(user_ids), chunk_users):
        stop = min(start + chunk_users, len(user_ids))
        n_u = stop - start
        codes = (user_codes[start:stop, None, :] + movie_codes[None, :, :]).reshape(-1, movie_codes.shape[1])
        scores = predict_proba(model, codes, batch_size=batch_size).reshape(n_u, n_movies)
        excluded = np.zeros((n_u, n_movies), dtype=bool)
        for row, uid in enumerate(user_ids[start:stop]):
            items = seen.get(int(uid))
            if items is None:
                continue
            pos = movie_pos.get_indexer(np.fromiter((int(m) for m in items), dtype=np.int64))
            excluded[row, pos[pos >= 0]] = True
        key = np.where(excluded, np.inf, -scores.astype(np.float64))
        # movies are in movie_id order, so a stable sort breaks score ties by movie_id asc
        order = np.argsort(key, axis=1, kind="stable")[:, :k_eff]
        top_scores = np.take_along_axis(scores, order, axis=1)
        valid = ~np.take_along_axis(excluded, order, axis=1)
        rows, cols = np.nonzero(valid)
        out_users.append(user_ids[start:stop][rows])
        out_ranks.append(cols + 1)
        out_movies.append(movie_ids[order[rows, cols]])
        out_scores.append(top_scores[rows, cols])
    if not out_users:
        return pd.DataFrame({"user_id": [], "rank": [], "movie_id": [], "score": []}).astype(
            {"user_id": "int64", "rank": "int64", "movie_id": "int64", "score": "float32"}
        )
    return pd.DataFrame(
        {
            "user_id": np.concatenate(out_users).astype(np.int64),
            "rank": np.concatenate(out_ranks).astype(np.int64),
            "movie_id": np.concatenate(out_movies).astype(np.int64),
            "score": np.concatenate(out_scores).astype(np.float32),
        }
    )


def save_model(model: keras.Model, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_model(path: str | Path) -> keras.Model:
    return keras.saving.load_model(Path(path), compile=False)
