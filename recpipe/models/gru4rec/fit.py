"""GRU4Rec training: every next-item step of every training session, once per epoch.

Validation is injected (`validate`: bundle -> {"val_recall@20": ..., ...}) by the caller,
so the model never depends on an evaluation protocol.
"""
from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping

import keras
import numpy as np
import pandas as pd

from recpipe.models.gru4rec.config import DEFAULT_CONFIG, GRU4RecConfig
from recpipe.models.gru4rec.data import pack_lanes, session_sequences
from recpipe.models.gru4rec.network import GRU4RecBundle, ItemIndex, _build_networks
from recpipe.models.lazy_adam import LazyAdam

Validator = Callable[[GRU4RecBundle], dict]
SEQUENCE_KEYS = {"sessions": "session_id", "users": "user_id"}


def _position_loss(y_true, y_pred):
    """Sampled losses: the network already returns each position's loss."""
    return y_pred


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ep = np.arange(1, len(history.get("loss", [])) + 1)
    ax1.plot(ep, history.get("loss", []), "o-", label="train loss")
    if "val_loss" in history:
        ax1.plot(ep, history["val_loss"], "s-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax2 = ax1.twinx()
    for key, style in (("val_recall@20", "g^--"), ("val_mrr@20", "mv--")):
        if key in history:
            ax2.plot(ep, history[key], style, label=key)
    ax2.set_ylabel("validation metric")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="center right")
    ax1.set_title("GRU4Rec training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fit_gru4rec(train_events: pd.DataFrame, config: GRU4RecConfig | None = None, *,
                validate: Validator | None = None, out_dir=None, verbose: int = 1,
                index: ItemIndex | None = None,
                initial_weights: Mapping[str, list[np.ndarray]] | None = None):
    """Train on every next-item step of every training session.

    train_events: user_id, movie_id, session_id (+ ts, line_no for order). `validate`,
    when given, is called with the bundle after every epoch and returns validation
    figures (e.g. val_recall@20, val_mrr@20, val_loss); `config.monitor` names the one
    that early stopping and best-epoch selection follow. `index`: the item vocabulary
    (default: the training items). `initial_weights` (warm start): layer name of the
    inference network -> weights to start from (shared with the training network; the
    optimizer starts fresh). Returns (bundle, history); history has per-epoch
    lists and train_seconds, train_steps, events_per_s, epochs_run, best_epoch."""
    index = index or ItemIndex.from_events(train_events)
    cfg = (config or DEFAULT_CONFIG).for_catalogue(len(index))
    keras.utils.set_random_seed(cfg.seed)
    times = None
    if cfg.target_gap_days > 0:
        if "ts" not in train_events.columns:
            raise ValueError("gru4rec target_gap_days needs the training events' ts")
        seqs, times = session_sequences(train_events, index, SEQUENCE_KEYS[cfg.sequences], with_times=True)
    else:
        seqs = session_sequences(train_events, index, SEQUENCE_KEYS[cfg.sequences])
    n_steps = int(sum(len(s) - 1 for s in seqs if len(s) >= 2))
    train_model, infer_model = _build_networks(len(index), cfg)
    for name, weights in (initial_weights or {}).items():
        layer = infer_model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(np.shape(w)) for w in weights] != expected:
            raise ValueError(f"initial weights of layer {name!r}: shapes {[np.shape(w) for w in weights]},"
                             f" the model's are {expected}")
        layer.set_weights(weights)
    sampled = cfg.loss != "cross_entropy"
    if sampled:  # negatives are drawn by training popularity
        counts = np.bincount(np.concatenate(seqs), minlength=len(index)) if seqs else np.zeros(len(index))
        train_model.get_layer("sampled_loss").set_popularity(counts)
    lr = cfg.learning_rate
    if cfg.lr_schedule == "cosine":  # updates per epoch ~ steps / (lanes * bptt)
        total_updates = max(1, cfg.epochs * math.ceil(n_steps / (cfg.batch_size * cfg.bptt)))
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total_updates, alpha=0.01)
    elif cfg.lr_schedule != "constant":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")
    # Sampled losses touch only a mini-batch's item rows: Lazy Adam updates just those,
    # so a step's cost does not grow with the catalogue (the full softmax touches every row).
    adam = LazyAdam if sampled else keras.optimizers.Adam
    train_model.compile(
        optimizer=adam(lr, clipnorm=cfg.clipnorm or None),
        # Sum over real steps / all positions of the window: every event weighs the same
        # in every update; the nearly empty windows at the ragged end of the lanes then
        # make small updates (a per-window mean there gave full Adam steps on a handful of
        # events and visibly damaged the model at the end of some epochs).
        loss=_position_loss if sampled else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # False keeps TensorFlow's graph mode (XLA was slower on CPU); on JAX it would run
        # every step eagerly, so other backends take Keras's "auto" (JAX jit, torch eager).
        jit_compile=cfg.jit_compile if keras.backend.backend() == "tensorflow" else "auto",
    )
    bundle = GRU4RecBundle(infer_model, index, cfg)
    monitor = cfg.monitor if validate is not None else None
    higher_better = monitor is not None and monitor != "val_loss"
    rng = np.random.default_rng(cfg.seed)
    history: dict[str, list] = {}
    best, best_epoch, best_weights, waited = None, 0, None, 0
    train_seconds = 0.0
    rnn_t = train_model.get_layer("gru_train")
    for epoch in range(cfg.epochs):
        items, reset, targets, weights = pack_lanes(seqs, cfg.batch_size, cfg.bptt, rng, cfg.target_horizon,
                                                    times, timedelta(days=cfg.target_gap_days))
        rnn_t.reset_state()
        t0 = time.perf_counter()
        x, y = ([items, reset, targets, weights], np.zeros(targets.shape, np.float32)) if sampled \
            else ([items, reset], targets)
        h = train_model.fit(
            x, y, sample_weight=weights, batch_size=cfg.batch_size,
            # A progress bar at verbose=1; at 2 the line printed below is the epoch's log.
            epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=1 if verbose == 1 else 0,
        )
        train_seconds += time.perf_counter() - t0
        # Keras averages over padded positions too: report the mean over real steps
        h.history["loss"] = [v * weights.size / max(weights.sum(), 1.0) for v in h.history["loss"]]
        logs = dict((k, v[-1]) for k, v in h.history.items())
        if validate is not None:
            logs.update(validate(bundle))
        for k, v in logs.items():
            history.setdefault(k, []).append(float(v))
        if verbose:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in logs.items())
            print(f"epoch {epoch + 1}/{cfg.epochs}: {shown}", flush=True)
        if monitor is None:
            continue
        value = logs[monitor]
        improved = best is None or (value > best if higher_better else value < best)
        if improved:
            best, best_epoch, waited = value, epoch + 1, 0
            best_weights = infer_model.get_weights()
        else:
            waited += 1
            if cfg.patience and waited >= cfg.patience:
                break
    if best_weights is not None:
        infer_model.set_weights(best_weights)
    epochs_run = len(history.get("loss", []))
    history.update(
        train_seconds=train_seconds, train_steps=n_steps, epochs_run=epochs_run,
        best_epoch=best_epoch or epochs_run,
        events_per_s=n_steps * epochs_run / train_seconds if train_seconds else float("nan"),
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _plot_history(history, out / "gru4rec_training.png")
        (out / "gru4rec_history.json").write_text(json.dumps(history, indent=2))
    return bundle, history

