"""Top-k per row of a dense score chunk, vectorised: what every scoring model shares.

A model scores a chunk of users against every item ([users_in_chunk, items]), so memory
is one chunk's scores, never users x items. The contract: excluded items (and scores
that are not finite) never appear; best score first, ties by ascending item index
(= ascending movie_id, the indices follow sorted movie ids); fewer than k per row only
when the row runs out of items.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

DEFAULT_CHUNK_USERS = 512  # users scored at once: memory is chunk x items float64


def unique_sorted(values) -> np.ndarray:
    """np.unique(values) for integers, by a sort: numpy 2.4's np.unique (no return_*
    options) hashes, ~40 s on 25M distinct int64 keys against ~0.3 s for this."""
    values = np.sort(np.asarray(values).ravel())
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def flatten(groups: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(row, value) int64 arrays of a list of per-row iterables (row i repeated len(groups[i]))."""
    if groups and all(isinstance(g, np.ndarray) or g == () for g in groups):  # SeenMovies: no per-value loop
        lengths = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        parts = [g for g in groups if len(g)]
        values = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return np.repeat(np.arange(len(groups), dtype=np.int64), lengths), values
    groups = [g if hasattr(g, "__len__") else list(g) for g in groups]
    lengths = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
    values = np.fromiter(itertools.chain.from_iterable(groups), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(groups), dtype=np.int64), lengths), values


def exclusion_matrix(rows: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Boolean csr [rows, items] of (row, item index) pairs; negative indices (unknown) dropped."""
    keep = items >= 0
    rows, items = rows[keep], items[keep]
    return sp.csr_matrix((np.ones(len(rows), bool), (rows, items)), shape=shape)


def exclusions(item_index_of, rows_of: Sequence[Iterable[int]], n_items: int) -> sp.csr_matrix:
    """Exclusion csr for the movie id lists `rows_of`, encoded in one call by `item_index_of`
    (movie ids -> item indices, -1 when unknown): no per-user encoding."""
    rows, movies = flatten(rows_of)
    return exclusion_matrix(rows, np.asarray(item_index_of(movies), dtype=np.int64), (len(rows_of), n_items))


def top_k(scores: np.ndarray, k: int, exclude: sp.spmatrix | None = None):
    """(row, rank, item, score) arrays of each row's top k of `scores` [n, items]: rank from
    1, rows ascending, then rank. `exclude`: sparse [n, items] whose stored entries are
    never returned. The scores are copied, never changed."""
    scores = np.array(scores, dtype=np.float64)  # a copy: exclusions are written into it
    n, m = scores.shape
    if exclude is not None and exclude.nnz:
        ex = exclude.tocsr()
        scores[np.repeat(np.arange(n), np.diff(ex.indptr)), ex.indices] = -np.inf
    scores[~np.isfinite(scores)] = -np.inf  # NaN/inf are never returned, as excluded items
    kk = min(k, m)
    if kk <= 0 or n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, np.float64)
    kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1]
    # Every item >= the k-th value is kept, so ties at the edge are all ordered below.
    rows, items = np.nonzero((scores >= kth[:, None]) & (scores > -np.inf))
    values = scores[rows, items]
    order = np.lexsort((items, -values, rows))
    rows, items, values = rows[order], items[order], values[order]
    rank = ranks_within(rows)
    keep = rank <= k
    return (rows[keep].astype(np.int64), rank[keep].astype(np.int64), items[keep].astype(np.int64),
            values[keep])


def ranks_within(rows: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal values of `rows` (sorted): each entry's rank in its row."""
    if not len(rows):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return np.arange(len(rows), dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, len(rows)])) + 1


def chunked_top_k(score_fn, n_rows: int, k: int, exclude: sp.spmatrix | None = None,
                  chunk_size: int = DEFAULT_CHUNK_USERS):
    """top_k over `score_fn(lo, hi) -> scores [hi - lo, items]`, `chunk_size` rows at a time
    (memory is one chunk's scores); rows are global. Returns (row, rank, item, score)."""
    parts = []
    for lo in range(0, n_rows, chunk_size):
        hi = min(lo + chunk_size, n_rows)
        r, rank, items, values = top_k(score_fn(lo, hi), k, None if exclude is None else exclude[lo:hi])
        parts.append((r + lo, rank, items, values))
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, np.float64)
    return tuple(np.concatenate(p) for p in zip(*parts))


def group_lists(groups: Mapping[int, Iterable[int]] | None, keys) -> list:
    """groups[key] (or empty) for each key, in order."""
    groups = groups or {}
    return [groups.get(key, ()) for key in keys]
