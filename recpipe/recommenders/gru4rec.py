"""GRU4Rec behind the model interface: trains on the night's session build, and serves
each user from the state after the user's most recent session (as the sessions were
built for training)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from recpipe.models.gru4rec.config import DEFAULT_CONFIG, GRU4RecConfig
from recpipe.recommenders.base import Fitted, History, Store, empty_lists, history_summary, merge_config


def _verbosity() -> int:
    import sys

    return 1 if sys.stderr.isatty() else 2


class GRU4RecRecommender:
    name = "gru4rec"

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config(DEFAULT_CONFIG.to_dict(), overrides, epochs, self.name)
        GRU4RecConfig.from_dict(config)
        return config

    def prepare(self, store: Store, plan, inputs, config: dict, train_until):
        if inputs.sessions_build_id is None:
            raise ValueError("gru4rec needs the night's session build (NightInputs.sessions_build_id)")
        params, sets = store.session_build(inputs.sessions_build_id)
        train = sets.get("train")
        if train is None or train.empty:
            raise ValueError(f"session build {inputs.sessions_build_id} has no training sessions")
        stats = {"train_until": train_until.isoformat(), "session_build_id": int(inputs.sessions_build_id),
                 "session_params": params, "events": int(len(train)), "sessions": int(train["session_id"].nunique())}
        return train, stats

    def fit(self, data, config: dict, out_dir: Path, verbose: int | None = None) -> Fitted:
        from recpipe.models.gru4rec.fit import fit_gru4rec

        train, stats = data
        started = time.perf_counter()
        bundle, history = fit_gru4rec(train, GRU4RecConfig.from_dict(config), out_dir=out_dir,
                                      verbose=_verbosity() if verbose is None else verbose)
        seconds = time.perf_counter() - started
        bundle.save(out_dir)
        return Fitted({**stats, "items": int(bundle.n_items)}, history_summary(history, seconds),
                      {"train_events": int(len(train))})

    def load(self, bundle, run, store: Store):
        from recpipe.models.gru4rec.network import MODEL_FILE, GRU4RecBundle

        # Every file of the verified bundle sits in one private folder.
        return GRU4RecBundle.load(bundle.path(MODEL_FILE).parent), run.data_stats.get("session_params", {})

    def recommend(self, model, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        network, session_params = model
        histories = latest_histories(history, session_params, user_ids)
        # A history with no movie the model knows gives it nothing to go on: fallback.
        usable = {u: items for u, items in histories.items() if (network.index.encode(items) >= 0).any()}
        return score_top_k(network, usable, history.seen, k=k)

    def extra_metrics(self, model, store: Store, holdout) -> dict:
        return {}


def latest_histories(history: History, session_params: dict, user_ids) -> dict[int, list[int]]:
    """Each user's most recent session before as_of, as the model saw sessions in training."""
    from recpipe.sessions import SessionParams, latest_sessions, sessionize

    params = SessionParams.from_dict(session_params)
    ratings = history.ratings[history.ratings["user_id"].isin(np.asarray(user_ids))]
    sessions = sessionize(ratings, params.mode, params.session_gap, params.bucket)
    latest = latest_sessions(sessions, params.min_rating)
    return {int(u): m.tolist() for u, m in latest.groupby("user_id", sort=True)["movie_id"]}


def score_top_k(bundle, histories: Mapping[int, Iterable[int]],
                seen: Mapping[int, Iterable[int]] | None = None, k: int = 10,
                batch_size: int = 512) -> pd.DataFrame:
    """Top-k movies per user from the GRU state after the user's history.

    histories: user_id -> movie_ids in time order (e.g. the most recent session(s)
    before T); movies unknown to the model are skipped; an empty history scores
    from the zero state. seen: user_id -> movie_ids never to recommend.
    Ranking over all items by logit, ties broken by ascending movie_id; score is
    the softmax probability over the whole catalogue."""
    users = list(histories)
    seen = seen or {}
    rows_u, rows_r, rows_m, rows_s = [], [], [], []
    for lo in range(0, len(users), batch_size):
        chunk = users[lo : lo + batch_size]
        seqs = []
        for u in chunk:
            idx = bundle.index.encode(list(histories[u]))
            seqs.append(idx[idx >= 0].astype(np.int32))
        logits = np.stack(bundle.sequence_logits(seqs, batch_size=256, last_only=True))
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        masked = logits.copy()
        for row, u in enumerate(chunk):
            s = bundle.index.encode(list(seen.get(u, ())))
            masked[row, s[s >= 0]] = -np.inf
        kk = min(k, masked.shape[1])
        # k-th best value per row; every item >= it (ties included) is a candidate
        kth = -np.partition(-masked, kk - 1, axis=1)[:, kk - 1] if kk else None
        for row, u in enumerate(chunk):
            if not kk:
                break
            cand = np.flatnonzero(masked[row] >= kth[row])
            cand = cand[np.isfinite(masked[row, cand])]
            # best score first, ties by ascending item index = ascending movie_id
            top = cand[np.lexsort((cand, -masked[row, cand]))][:k]
            rows_u.append(np.full(len(top), u, dtype=np.int64))
            rows_r.append(np.arange(1, len(top) + 1, dtype=np.int64))
            rows_m.append(bundle.index.decode(top))
            rows_s.append(probs[row, top])
    if not rows_u:
        return empty_lists()
    return pd.DataFrame({
        "user_id": np.concatenate(rows_u), "rank": np.concatenate(rows_r),
        "movie_id": np.concatenate(rows_m), "score": np.concatenate(rows_s),
    })


RECOMMENDER = GRU4RecRecommender()
