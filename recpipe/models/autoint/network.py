"""AutoInt+ network builder: field codes -> probability. Only a builder, compile and file I/O."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import keras

from recpipe.models.autoint.config import SEED000_CONFIG, AutoIntConfig
from recpipe.models.autoint.layers import DNNTower, FieldEmbedding, InteractingLayer
from recpipe.models.lazy_adam import LazyAdam


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
    if config.optimizer == "lazy_adam":
        return LazyAdam(learning_rate=lr, weight_decay=config.weight_decay or None)
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



def save_model(model: keras.Model, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_model(path: str | Path) -> keras.Model:
    return keras.saving.load_model(Path(path), compile=False)
