"""AutoInt+ training on arrays of field codes, and batch prediction."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import keras
import numpy as np

from recpipe.models.autoint.config import SEED000_CONFIG, AutoIntConfig
from recpipe.models.autoint.network import build_autoint, compile_autoint


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
    initial_weights: Mapping[str, list[np.ndarray]] | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train AutoInt+ on int32 codes X (n, n_fields) and 0/1 labels y.

    Without X_val the LAST `val_fraction` of the rows validate (sort by time before
    calling for a temporal validation). Seeds fixed by `config.seed`; EarlyStopping on
    val loss with the best weights restored. Returns (model, history) where history
    holds the per-epoch curves plus `best_epoch` (1-based), `epochs_run`, `fit_seconds`,
    `train_rows`, `val_rows`, `samples_per_s` ((train+val rows) x epochs / fit seconds)
    and `train_samples_per_s` (train rows only). With out_dir, the curves are saved
    there as training_loss.png / training_auc.png and the history as history.json.
    `initial_weights` (warm start): layer name -> weights to start from instead of the
    fresh initialisation (the optimizer starts fresh).
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
    set_initial_weights(model, initial_weights)
    callbacks = []
    monitor = "val_loss" if X_val is not None else "loss"
    callbacks.append(
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True)
    )
    started = time.perf_counter()
    hist = model.fit(
        ShuffledBatches(X, y, config.batch_size, seed=config.seed),
        epochs=config.epochs,
        validation_data=None if X_val is None else ShuffledBatches(X_val, y_val, config.batch_size, seed=None),
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


class ShuffledBatches(keras.utils.PyDataset):
    """Mini-batches gathered from the arrays in place, in a new random order each epoch
    (seed None: in order). Given numpy arrays, Keras's TensorFlow adapter copies them
    into the graph and again to shuffle: at 50M rows x 14 codes, 5.8 GiB over the
    arrays' 2.8 GiB; this costs one int32 permutation (bench/autoint_memory.py)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None):
        super().__init__()
        self.X, self.y, self.batch_size = X, y, int(batch_size)
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._order: np.ndarray | None = None
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.X) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self._order is None:
            return self.X[rows], self.y[rows]
        picked = np.sort(self._order[rows])  # a batch is a set: sorted rows read memory in order
        return self.X[picked], self.y[picked]

    def on_epoch_end(self) -> None:
        if self._rng is not None:
            self._order = self._rng.permutation(len(self.X)).astype(np.int32 if len(self.X) < 2**31 else np.int64)


def set_initial_weights(model: keras.Model, initial_weights: Mapping[str, list[np.ndarray]] | None) -> None:
    """Warm start: per layer name, the weights to start from (layers not named keep their
    fresh initialisation); shapes must match the built model's."""
    for name, weights in (initial_weights or {}).items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(np.shape(w)) for w in weights] != expected:
            raise ValueError(f"initial weights of layer {name!r}: shapes {[np.shape(w) for w in weights]},"
                             f" the model's are {expected}")
        layer.set_weights(weights)


def predict_proba(model: keras.Model, X: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Probabilities as float32 (n,)."""
    X = np.ascontiguousarray(X, dtype=np.int32)
    if len(X) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.asarray(model.predict(X, batch_size=batch_size, verbose=0), dtype=np.float32).reshape(-1)

