"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders") as an array-level model.

X is the binary user x item matrix of positives (rating >= min_rating). With
P = (X^T X + lambda I)^-1, the item-item weights are B = I - P diag(1 / diag(P)),
i.e. B_ij = -P_ij / P_jj off the diagonal and B_jj = 0 (no item predicts itself).
A user's scores are x_u B, where x_u is the binary row of the user's history.

X^T X + lambda I is symmetric positive definite, so P comes from its Cholesky factor
(LAPACK potrf/potri, in place, float32): at 10k items about 6x faster than a general
float64 inverse, in a third of the memory. Candidates that share the positives share
one Gram matrix (fit_many).

The helpers below (item index, history rows, chunked top-k, save/load) are shared
with recpipe.models.itemknn.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recpipe.models.topk import DEFAULT_CHUNK_USERS, chunked_top_k, exclusion_matrix, exclusions, flatten, \
    group_lists, unique_sorted


@dataclass(frozen=True)
class EASEConfig:
    lambda_: float = 500.0  # L2 weight on B
    min_rating: int = 4  # ratings >= this are the positives of X
    # Item budget: only the max_items most popular items (by positives) get a column.
    # B is dense items x items; a fit holds the Gram matrix and B, float32: 8 * n^2 bytes
    # (10k items: 0.8 GB; choosing among candidates keeps the best B too); None keeps every item.
    max_items: int | None = None


# ------------------------------------------------------------------ shared helpers
# Blocks of X^T X computed at once: scipy's sparse product (and numpy's partition in
# item-kNN) release the GIL. Each block in flight holds ~12 bytes x items x block.
FIT_THREADS = min(4, os.cpu_count() or 1)
GRAM_BLOCK = 1024  # items per block of X^T X


def cooccurrence(x, xc, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of X^T X, dense float32 [hi - lo, items]: how many users have both
    item lo+i and item j among their positives (xc: x in CSC form)."""
    return (xc[:, lo:hi].T @ x).toarray()


def gram_matrix(x, block: int = GRAM_BLOCK) -> np.ndarray:
    """X^T X dense float32 [items, items], a block of rows per thread (counts are exact
    in float32 below 2^24); no sparse items x items intermediate."""
    xc = x.tocsc()
    n = x.shape[1]
    gram = np.empty((n, n), np.float32)

    def fill(lo: int) -> None:
        gram[lo:lo + block] = cooccurrence(x, xc, lo, min(lo + block, n))

    with ThreadPoolExecutor(FIT_THREADS) as pool:
        list(pool.map(fill, range(0, n, block)))
    return gram


def item_index(movie_ids) -> np.ndarray:
    """Sorted unique movie ids: position = item index, so index order = movie_id order."""
    return unique_sorted(np.asarray(movie_ids, dtype=np.int64))


def encode(movie_ids: np.ndarray, items) -> np.ndarray:
    """Item indices of `items` in `movie_ids` (sorted); -1 where unknown."""
    items = np.asarray(items if isinstance(items, np.ndarray) else list(items), dtype=np.int64)
    if len(movie_ids) == 0:
        return np.full(len(items), -1, np.int64)
    pos = np.searchsorted(movie_ids, items).clip(0, len(movie_ids) - 1)
    return np.where(movie_ids[pos] == items, pos, -1)


def budget_items(movie_ids, max_items: int | None) -> np.ndarray:
    """Sorted ids of the `max_items` most frequent ids in `movie_ids` (one id per positive;
    ties: lower id first); every id when the budget is None or not exceeded."""
    ids, counts = np.unique(np.asarray(movie_ids, dtype=np.int64), return_counts=True)
    if max_items is None or len(ids) <= max_items:
        return ids
    keep = np.lexsort((ids, -counts))[:max_items]
    return np.sort(ids[keep])


def positives_matrix(interactions: pd.DataFrame, min_rating: int, max_items: int | None = None):
    """(X csr [users, items] binary float32, movie_ids) of the rows with rating >= min_rating;
    with `max_items`, only the most popular items' columns (budget_items)."""
    pos = interactions[interactions["rating"] >= min_rating]
    movie_ids = budget_items(pos["movie_id"].to_numpy(), max_items)
    if max_items is not None and len(movie_ids) == max_items:
        pos = pos[pos["movie_id"].isin(movie_ids)]
    users, rows = np.unique(pos["user_id"].to_numpy(), return_inverse=True)
    cols = encode(movie_ids, pos["movie_id"].to_numpy())
    x = sp.csr_matrix((np.ones(len(pos), np.float32), (rows, cols)), shape=(len(users), len(movie_ids)))
    x.data[:] = 1.0  # a repeated (user, movie) pair stays one positive
    return x, movie_ids


def history_rows(movie_ids: np.ndarray, histories: Sequence[Iterable[int]]):
    """Binary csr [len(histories), items]; movies unknown to the index are skipped."""
    rows, movies = flatten(histories)  # one encode for every user: no per-user loop
    x = exclusion_matrix(rows, encode(movie_ids, movies), (len(histories), len(movie_ids))).astype(np.float32)
    x.data[:] = 1.0  # a repeated movie stays one positive
    return x


def _empty_top_k() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "rank": pd.Series(dtype="int64"),
                         "movie_id": pd.Series(dtype="int64"), "score": pd.Series(dtype="float64")})


def top_k_frame(score_fn, movie_ids: np.ndarray, histories: Mapping, exclude: Mapping | None,
                k: int, chunk_size: int = DEFAULT_CHUNK_USERS) -> pd.DataFrame:
    """Top-k per user of `score_fn(list of histories) -> [n, items]`, `chunk_size` users at a
    time (memory is one chunk's scores). Excluded movies never appear; best score first,
    ties by ascending movie_id; fewer than k rows only when the catalogue runs out."""
    users = list(histories)
    exclude = histories if exclude is None else exclude
    hists = [histories[u] for u in users]
    excluded = exclusions(lambda m: encode(movie_ids, m), group_lists(exclude, users), len(movie_ids))
    rows, rank, items, score = chunked_top_k(lambda lo, hi: score_fn(hists[lo:hi]), len(users), k, excluded,
                                             chunk_size)
    if not len(rows):
        return _empty_top_k()
    return pd.DataFrame({"user_id": np.asarray(users, np.int64)[rows], "rank": rank,
                         "movie_id": movie_ids[items], "score": score})


def save_arrays(path, name: str, meta: dict, **arrays) -> Path:
    """Write <path>/<name>.npz (arrays, no pickle) and <path>/<name>.json (meta)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / f"{name}.npz", **arrays)
    (path / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return path


def load_arrays(path, name: str):
    path = Path(path)
    meta = json.loads((path / f"{name}.json").read_text())
    with np.load(path / f"{name}.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return meta, arrays


def ndcg_at_k(top: pd.DataFrame, positives: pd.DataFrame, k: int = 10) -> float:
    """Mean NDCG@k over the users of `positives` (user_id, movie_id); a user without a
    list scores 0. Ideal DCG over min(#positives, k) slots (one target: 1/log2(rank+1))."""
    lists = top[top["rank"] <= k].groupby("user_id")
    wanted = positives.groupby("user_id")["movie_id"].agg(set)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for user, items in wanted.items():
        ranked = lists.get_group(user).sort_values("rank")["movie_id"].tolist() if user in lists.groups else []
        gains = np.array([m in items for m in ranked], dtype=np.float64)
        total += float((gains * disc[: len(gains)]).sum() / disc[: min(len(items), k)].sum())
    return total / len(wanted) if len(wanted) else float("nan")


def choose(fitted: Iterable[tuple[object, object]], train: pd.DataFrame, validation: pd.DataFrame, *,
           k: int = 10, chunk_size: int = DEFAULT_CHUNK_USERS):
    """The best of `fitted`, (candidate, model fitted on `train`) pairs (a generator
    fits one at a time): each validation user is scored from the user's train positives,
    every movie the user has in train excluded; the best NDCG@k on `validation`'s
    positives wins. Returns (best_model, best_candidate, log)."""
    users = np.unique(validation["user_id"].to_numpy())
    tr = train[train["user_id"].isin(users)]
    seen = tr.groupby("user_id")["movie_id"].agg(list)
    exclude = {int(u): seen.get(u, []) for u in users}
    histories_by_floor = {}  # candidates usually share min_rating
    log, best = [], None
    for cand, model in fitted:
        lo = model.config.min_rating
        if lo not in histories_by_floor:
            hist = tr[tr["rating"] >= lo].groupby("user_id")["movie_id"].agg(list)
            histories_by_floor[lo] = {int(u): hist.get(u, []) for u in users}
        top = model.score_top_k(histories_by_floor[lo], exclude, k, chunk_size=chunk_size)
        value = ndcg_at_k(top, validation[validation["rating"] >= lo], k)
        log.append({"candidate": asdict(cand) if is_dataclass(cand) else cand, f"ndcg@{k}": value})
        if best is None or value > best[2]:
            best = (model, cand, value)
        del model, top  # a loser is freed before the next candidate's fit
    return best[0], best[1], log


# -------------------------------------------------------------------------- EASE
class EASEModel:
    """Item-item weights B [items, items] over `movie_ids` (ascending)."""

    def __init__(self, B: np.ndarray, movie_ids: np.ndarray, config: EASEConfig):
        self.B, self.movie_ids, self.config = B, np.asarray(movie_ids, np.int64), config

    def scores(self, histories: Sequence[Iterable[int]]) -> np.ndarray:
        """Scores [len(histories), items] (float32): x_u B."""
        return np.asarray(history_rows(self.movie_ids, histories) @ self.B)

    def score_top_k(self, histories: Mapping[int, Iterable[int]],
                    exclude: Mapping[int, Iterable[int]] | None = None, k: int = 10,
                    chunk_size: int = DEFAULT_CHUNK_USERS) -> pd.DataFrame:
        """user_id, rank, movie_id, score; `exclude` defaults to the histories."""
        return top_k_frame(self.scores, self.movie_ids, histories, exclude, k, chunk_size)

    def save(self, path) -> Path:
        return save_arrays(path, "ease", {"model": "ease", "config": asdict(self.config)},
                           B=self.B, movie_ids=self.movie_ids)

    @classmethod
    def load(cls, path) -> "EASEModel":
        meta, arrays = load_arrays(path, "ease")
        return cls(arrays["B"], arrays["movie_ids"], EASEConfig(**meta["config"]))


def fit(interactions: pd.DataFrame, config: EASEConfig = EASEConfig()) -> EASEModel:
    """interactions: user_id, movie_id, rating (one row per rating)."""
    return next(fit_many(interactions, [config]))


def fit_many(interactions: pd.DataFrame, configs: Sequence[EASEConfig]) -> Iterator[EASEModel]:
    """One model per config, in order, as fit() would give each, one at a time (a
    generator: a loser can be freed before the next fit). Consecutive configs with the
    same positives (min_rating, max_items) share one Gram matrix."""
    key, gram, movie_ids = None, None, None
    for config in configs:
        if (config.min_rating, config.max_items) != key:
            key, gram = (config.min_rating, config.max_items), None  # the old Gram goes before the new one
            x, movie_ids = positives_matrix(interactions, config.min_rating, config.max_items)
            gram = gram_matrix(x)
            del x
        yield EASEModel(_weights(gram, config.lambda_), movie_ids, config)


def _weights(gram: np.ndarray, lambda_: float) -> np.ndarray:
    """B [items, items] float32 from the Gram matrix (left unchanged)."""
    a = gram.copy()
    a[np.diag_indices_from(a)] += np.float32(lambda_)
    p = _inverse_spd(a)
    if p is None:  # float32 Cholesky broke down (condition beyond float32): redo in float64
        a = gram.astype(np.float64)
        a[np.diag_indices_from(a)] += lambda_
        p = np.linalg.inv(a).astype(np.float32)
    diag = np.diag(p).copy()
    p /= -diag[None, :]
    np.fill_diagonal(p, 0.0)
    return p


def _inverse_spd(a: np.ndarray) -> np.ndarray | None:
    """The inverse of symmetric positive definite `a` (C-ordered, overwritten), or None
    when the Cholesky factorisation fails. a.T is the same matrix in Fortran order, so
    LAPACK works in place; its lower triangle is a's upper one, mirrored afterwards."""
    from scipy.linalg import lapack

    factor, info = lapack.spotrf(a.T, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        return None
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        return None
    p = inverse.T  # a itself when LAPACK worked in place
    _mirror_upper(p)
    return p


def _mirror_upper(p: np.ndarray, block: int = GRAM_BLOCK) -> None:
    """Copy the upper triangle onto the lower one, a block of rows at a time (no n^2 temporary)."""
    n = len(p)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        p[lo:hi, :lo] = p[:lo, lo:hi].T
        diag = p[lo:hi, lo:hi]
        below = np.tril_indices(hi - lo, -1)
        diag[below] = diag.T[below]


def choose_lambda(train: pd.DataFrame, validation: pd.DataFrame, candidates: Iterable[float],
                  min_rating: int = 4, k: int = 10, max_items: int | None = None):
    """Best lambda by NDCG@k on `validation` (user_id, movie_id, rating), fitting on `train`.
    Returns (model, lambda, log of {candidate, ndcg@k})."""
    configs = [EASEConfig(lambda_=float(lam), min_rating=min_rating, max_items=max_items) for lam in candidates]
    return choose(((c.lambda_, model) for c, model in zip(configs, fit_many(train, configs))), train, validation, k=k)
