"""Item-kNN: cosine similarity between items' columns of the binary positives matrix.

sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrinkage), diagonal zero. For
each item j only its `neighbours` most similar items i are kept (column j of the
sparse W), and a user's score for j is sum over the user's history items i of W_ij
(x_u W). Similarities are computed a block of items at a time, so memory is
items x block per thread, not items x items.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recpipe.models.ease import FIT_THREADS, GRAM_BLOCK, choose, cooccurrence, history_rows, load_arrays, \
    positives_matrix, save_arrays, top_k_frame
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
        block: int = GRAM_BLOCK) -> ItemKNNModel:
    """interactions: user_id, movie_id, rating (one row per rating)."""
    return fit_many(interactions, [config], block)[0]


def fit_many(interactions: pd.DataFrame, configs: Sequence[ItemKNNConfig], block: int = GRAM_BLOCK) -> list[ItemKNNModel]:
    """One model per config, as fit() would give each. Configs with the same positives
    (min_rating, max_items) share one co-occurrence product per block, and the same
    shrinkage one similarity and one selection (a smaller neighbour count keeps a prefix
    of each item's order): choosing among neighbours x shrinkage candidates costs about
    one fit, not one per candidate. Blocks run on FIT_THREADS threads (scipy's sparse
    product and numpy's partition release the GIL)."""
    models: dict[int, ItemKNNModel] = {}
    by_positives: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        by_positives.setdefault((config.min_rating, config.max_items), []).append(i)
    for (min_rating, max_items), members in by_positives.items():
        x, movie_ids = positives_matrix(interactions, min_rating, max_items)
        xc = x.tocsc()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        n = len(movie_ids)
        keeps = {i: min(configs[i].neighbours, max(n - 1, 0)) for i in members}
        by_shrinkage: dict[float, list[int]] = {}
        for i in members:
            if keeps[i] > 0:
                by_shrinkage.setdefault(configs[i].shrinkage, []).append(i)

        def neighbours(lo: int) -> list[tuple]:
            """(config, W rows = neighbours, W columns = items lo.., similarities) of a block."""
            hi = min(lo + block, n)
            co = cooccurrence(x, xc, lo, hi)  # [block, items] (symmetric: a row per item)
            out = []
            for shrinkage, same in by_shrinkage.items():
                sim = co / (norms[lo:hi, None] * norms[None, :] + shrinkage + 1e-12)
                sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
                items, near, rank = _top_per_row(sim, max(keeps[i] for i in same))
                values = sim[items, near]
                out += [(i, near[rank < keeps[i]], items[rank < keeps[i]] + lo, values[rank < keeps[i]]) for i in same]
            return out

        parts: dict[int, list[tuple]] = {i: [] for i in members}
        with ThreadPoolExecutor(FIT_THREADS) as pool:
            for found in pool.map(neighbours, range(0, n, block)):  # in block order: deterministic
                for i, rows, cols, values in found:
                    parts[i].append((rows, cols, values))
        for i in members:
            def cat(j: int, dtype) -> np.ndarray:
                return np.concatenate([p[j] for p in parts[i]]).astype(dtype) if parts[i] else np.zeros(0, dtype)

            w = sp.csr_matrix((cat(2, np.float32), (cat(0, np.int64), cat(1, np.int64))), shape=(n, n))
            models[i] = ItemKNNModel(w, movie_ids, configs[i])
    return [models[i] for i in range(len(configs))]


def _top_per_row(sim: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, rank within the row from 0) of the `keep` largest positive entries
    of each row, by row then rank; equal similarities keep the lower column (movie_id).
    A partition finds each row's keep-th largest value, and only the entries at or above
    it are sorted: a full sort of every row (items log items each) was most of the fit
    at 20k items."""
    n = sim.shape[1]
    if keep < n:
        floor = np.partition(sim, n - keep, axis=1)[:, n - keep]  # each row's keep-th largest
    else:
        floor = sim.min(axis=1)
    r, c = np.nonzero((sim >= floor[:, None]) & (sim > 0))  # ties at the floor may add a few
    order = np.lexsort((c, -sim[r, c], r))  # by row, similarity desc, column asc
    r, c = r[order], c[order]
    first = np.searchsorted(r, r, side="left")  # where each entry's row starts
    rank = np.arange(len(r)) - first
    kept = rank < keep
    return r[kept], c[kept], rank[kept]


def choose_config(train: pd.DataFrame, validation: pd.DataFrame, candidates: Iterable[ItemKNNConfig],
                  k: int = 10):
    """Best ItemKNNConfig by NDCG@k on `validation` (user_id, movie_id, rating), fitting on
    `train`. Returns (model, config, log of {candidate, ndcg@k})."""
    candidates = list(candidates)
    return choose(zip(candidates, fit_many(train, candidates)), train, validation, k=k)
