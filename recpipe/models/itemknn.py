"""Item-kNN: cosine similarity between items' columns of the binary positives matrix.

sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrinkage), diagonal zero. For
each item j only its `neighbours` most similar items i are kept (column j of the
sparse W), and a user's score for j is sum over the user's history items i of W_ij
(x_u W). Similarities are computed a block of columns at a time, so memory is
items x block, not items x items.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recpipe.models.ease import choose, history_rows, load_arrays, positives_matrix, save_arrays, top_k_frame
from recpipe.models.topk import DEFAULT_CHUNK_USERS


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbours: int = 100  # kept per item
    shrinkage: float = 0.0  # added to the cosine denominator: damps pairs of rare items
    min_rating: int = 4
    # Item budget: only the max_items most popular items get a column; the fit's time
    # grows with items^2 (memory is items x block); None keeps every item.
    max_items: int | None = None


class ItemKNNModel:
    """Sparse W [items, items] (column j: j's neighbours) over `movie_ids` (ascending)."""

    def __init__(self, W: sp.csr_matrix, movie_ids: np.ndarray, config: ItemKNNConfig):
        self.W, self.movie_ids, self.config = W.tocsr(), np.asarray(movie_ids, np.int64), config

    def scores(self, histories: Sequence[Iterable[int]]) -> np.ndarray:
        """Scores [len(histories), items] (float32): x_u W."""
        return (history_rows(self.movie_ids, histories) @ self.W).toarray()

    def score_top_k(self, histories: Mapping[int, Iterable[int]],
                    exclude: Mapping[int, Iterable[int]] | None = None, k: int = 10,
                    chunk_size: int = DEFAULT_CHUNK_USERS) -> pd.DataFrame:
        """user_id, rank, movie_id, score; `exclude` defaults to the histories."""
        return top_k_frame(self.scores, self.movie_ids, histories, exclude, k, chunk_size)

    def save(self, path) -> Path:
        return save_arrays(path, "itemknn", {"model": "itemknn", "config": asdict(self.config)},
                           data=self.W.data, indices=self.W.indices, indptr=self.W.indptr,
                           shape=np.asarray(self.W.shape), movie_ids=self.movie_ids)

    @classmethod
    def load(cls, path) -> "ItemKNNModel":
        meta, a = load_arrays(path, "itemknn")
        w = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=tuple(a["shape"]))
        return cls(w, a["movie_ids"], ItemKNNConfig(**meta["config"]))


def fit(interactions: pd.DataFrame, config: ItemKNNConfig = ItemKNNConfig(),
        block: int = 1024) -> ItemKNNModel:
    """interactions: user_id, movie_id, rating (one row per rating)."""
    x, movie_ids = positives_matrix(interactions, config.min_rating, config.max_items)
    xc = x.tocsc()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    n = len(movie_ids)
    keep = min(config.neighbours, max(n - 1, 0))
    rows, cols, vals = [], [], []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        co = (x.T @ xc[:, lo:hi]).toarray()  # co-occurrence counts [items, block]
        sim = co / (norms[:, None] * norms[None, lo:hi] + config.shrinkage + 1e-12)
        sim[np.arange(lo, hi), np.arange(hi - lo)] = 0.0
        if keep == 0:
            continue
        # stable sort of -sim: equal similarities keep the lower item index (movie_id)
        top = np.argsort(-sim, axis=0, kind="stable")[:keep]
        v = np.take_along_axis(sim, top, axis=0)
        nz = v > 0
        rows.append(top[nz])
        cols.append(np.broadcast_to(np.arange(lo, hi), top.shape)[nz])
        vals.append(v[nz])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    w = sp.csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))), shape=(n, n))
    return ItemKNNModel(w, movie_ids, config)


def choose_config(train: pd.DataFrame, validation: pd.DataFrame, candidates: Iterable[ItemKNNConfig],
                  k: int = 10):
    """Best ItemKNNConfig by NDCG@k on `validation` (user_id, movie_id, rating), fitting on
    `train`. Returns (model, config, log of {candidate, ndcg@k})."""
    return choose(lambda tr, cfg: fit(tr, cfg), list(candidates), train, validation, k=k)
