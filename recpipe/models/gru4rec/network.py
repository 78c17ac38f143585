"""GRU4Rec networks (training and inference, shared weights), the item index and the bundle."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import keras
import numpy as np
import pandas as pd
from keras import layers, ops

from recpipe.models.gru4rec.config import GRU4RecConfig
from recpipe.models.gru4rec.layers import ItemScores, ResettableGRUCell, SampledItemLoss

MODEL_FILE = "gru4rec.keras"
INDEX_FILE = "item_index.json"
CONFIG_FILE = "gru4rec_config.json"


class ItemIndex:
    """movie_id <-> contiguous index 0..n-1, in ascending movie_id order."""

    def __init__(self, movie_ids: Iterable[int]):
        ids = np.unique(np.asarray(list(movie_ids), dtype=np.int64))
        self.movie_ids = ids
        self._pos = pd.Series(np.arange(len(ids), dtype=np.int64), index=ids)

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> "ItemIndex":
        return cls(events["movie_id"].unique())

    def __len__(self) -> int:
        return len(self.movie_ids)

    def __contains__(self, movie_id) -> bool:
        return int(movie_id) in self._pos.index

    def encode(self, movie_ids) -> np.ndarray:
        """Indices of `movie_ids`; -1 for movies unknown to the index."""
        ids = np.asarray(movie_ids, dtype=np.int64)
        return self._pos.reindex(ids).fillna(-1).to_numpy(dtype=np.int64)

    def decode(self, idx) -> np.ndarray:
        return self.movie_ids[np.asarray(idx, dtype=np.int64)]

    def to_json(self) -> str:
        return json.dumps({"movie_ids": self.movie_ids.tolist()})

    @classmethod
    def from_json(cls, text: str) -> "ItemIndex":
        return cls(json.loads(text)["movie_ids"])


def _build_networks(n_items: int, cfg: GRU4RecConfig):
    """(train_model, infer_model), sharing all weights.

    Both take [items (int32 [B, T]), reset (float32 [B, T])] and return logits
    [B, T, n_items] (cross_entropy); with a sampled loss the training model also takes
    targets and weights and returns the loss per position [B, T]. The training model is
    stateful with a fixed batch of lanes."""
    cfg = cfg.for_catalogue(n_items)
    if cfg.tied:
        if cfg.embedding_dim != cfg.hidden:
            raise ValueError("tied=True needs embedding_dim == hidden")
        emb = out = ItemScores(n_items, cfg.hidden, name="item_scores")
    else:
        emb = layers.Embedding(n_items, cfg.embedding_dim, name="item_embedding")
        # Sampled losses gather their candidates' output rows: a row per item keeps that
        # gradient sparse (a [hidden, items] kernel gathered by column gets a dense one).
        out = layers.Dense(n_items, name="item_scores") if cfg.loss == "cross_entropy" \
            else ItemScores(n_items, cfg.hidden, name="item_scores")
    drop_e = layers.Dropout(cfg.dropout_embed, seed=cfg.seed, name="dropout_embed")
    proj = layers.Dense(3 * cfg.hidden, name="gru_input")
    cell = ResettableGRUCell(cfg.hidden, name="gru_cell")
    drop_h = layers.Dropout(cfg.dropout, seed=cfg.seed + 1, name="dropout_hidden")

    def body(items, reset, rnn):
        x = proj(drop_e(emb(items)))
        x = layers.Concatenate(axis=-1)([x, ops.expand_dims(reset, -1)])
        h = rnn(x)
        return h, (out(drop_h(h), score=True) if isinstance(out, ItemScores) else out(drop_h(h)))

    items = keras.Input(batch_shape=(cfg.batch_size, cfg.bptt), dtype="int32", name="items")
    reset = keras.Input(batch_shape=(cfg.batch_size, cfg.bptt), dtype="float32", name="reset")
    rnn_t = layers.RNN(cell, return_sequences=True, stateful=True, name="gru_train")
    if cfg.loss == "cross_entropy":
        _, logits = body(items, reset, rnn_t)
        train_model = keras.Model([items, reset], logits, name="gru4rec_train")
    else:
        # Sampled losses: the network returns each position's loss; the [N, items] logits
        # are never formed (inputs: items, reset, targets, weights).
        targets = keras.Input(batch_shape=(cfg.batch_size, cfg.bptt), dtype="int32", name="targets")
        weights = keras.Input(batch_shape=(cfg.batch_size, cfg.bptt), dtype="float32", name="weights")
        x = proj(drop_e(emb(items)))
        h = drop_h(rnn_t(layers.Concatenate(axis=-1)([x, ops.expand_dims(reset, -1)])))
        if not cfg.tied:
            out.build((None, cfg.hidden))  # built here: the sampled loss reads its weights, never calls it
        sampled = SampledItemLoss(n_items, cfg.loss, cfg.n_sample, cfg.sample_alpha, logq=cfg.logq,
                                  bpreg=cfg.bpreg, elu_param=cfg.elu_param, seed=cfg.seed + 2, name="sampled_loss")
        sampled.scores_layer = out
        n = cfg.batch_size * cfg.bptt
        loss = sampled(ops.reshape(h, (n, cfg.hidden)), ops.reshape(targets, (n,)), ops.reshape(weights, (n,)))
        train_model = keras.Model([items, reset, targets, weights], ops.reshape(loss, (cfg.batch_size, cfg.bptt)),
                                  name="gru4rec_train")

    items_i = keras.Input(shape=(None,), dtype="int32", name="items")
    reset_i = keras.Input(shape=(None,), dtype="float32", name="reset")
    rnn_i = layers.RNN(cell, return_sequences=True, name="gru")
    _, logits_i = body(items_i, reset_i, rnn_i)
    infer_model = keras.Model([items_i, reset_i], logits_i, name="gru4rec")
    return train_model, infer_model


# ----------------------------------------------------------------------- bundle
class GRU4RecBundle:
    """Inference network + item index + config; `hidden_states` and `item_logits`."""

    def __init__(self, model: keras.Model, index: ItemIndex, config: GRU4RecConfig):
        self.model, self.index, self.config = model, index, config
        self._hidden_model = keras.Model(model.inputs, model.get_layer("gru").output)
        self._out = model.get_layer("item_scores")

    @property
    def n_items(self) -> int:
        return len(self.index)

    def _weights(self):
        """Output layer as (W [hidden, items], b [items])."""
        w, b = self._out.get_weights()
        return (w.T, b) if isinstance(self._out, ItemScores) else (w, b)

    def _hidden(self, items: np.ndarray) -> np.ndarray:
        """GRU outputs [B, T, H] for padded item-index sequences (state starts at zero)."""
        reset = np.zeros(items.shape, dtype=np.float32)
        return np.asarray(self._hidden_model.predict_on_batch([items.astype(np.int32), reset]))

    def sequence_logits(self, sequences: list[np.ndarray], batch_size: int = 256,
                        last_only: bool = False):
        """For each item-index sequence (each starting from a zero state) yield logits at
        every position ([len, n_items]) or at its last position ([n_items]) when
        last_only. Sequences are batched by length; the order of the input is kept."""
        w, b = self._weights()
        lengths = np.array([len(s) for s in sequences])
        order = np.argsort(lengths, kind="stable")
        results: list = [None] * len(sequences)
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            t = int(lengths[chunk].max()) if len(chunk) else 0
            if t == 0:
                for i in chunk:
                    results[i] = b.copy() if last_only else np.zeros((0, len(b)), np.float32)
                continue
            t_pad = int(math.ceil(t / 16) * 16)  # few distinct shapes -> few retraces
            n_pad = batch_size if len(chunk) == batch_size else int(math.ceil(len(chunk) / 16) * 16)
            items = np.zeros((n_pad, t_pad), dtype=np.int32)
            for row, i in enumerate(chunk):
                items[row, : lengths[i]] = sequences[i]
            h = self._hidden(items)
            if last_only:  # one product for the chunk: a vector-matrix product per user reads all of w each time
                last = h[np.arange(len(chunk)), np.maximum(lengths[chunk] - 1, 0)] @ w + b
            for row, i in enumerate(chunk):
                n = lengths[i]
                if n == 0:
                    results[i] = b.copy() if last_only else np.zeros((0, len(b)), np.float32)
                elif last_only:
                    results[i] = last[row]
                else:
                    results[i] = h[row, :n] @ w + b
        return results

    def save(self, path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / MODEL_FILE)
        (path / INDEX_FILE).write_text(self.index.to_json())
        (path / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path) -> "GRU4RecBundle":
        path = Path(path)
        model = keras.saving.load_model(path / MODEL_FILE, compile=False)
        index = ItemIndex.from_json((path / INDEX_FILE).read_text())
        config = GRU4RecConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        return cls(model, index, config)
