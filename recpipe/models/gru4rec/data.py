"""GRU4Rec training data: session sequences and session-parallel lanes (truncated BPTT)."""
from __future__ import annotations

import heapq
import math
from datetime import timedelta

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recpipe.models.gru4rec.network import ItemIndex


def _ordered_sessions(events: pd.DataFrame, key: str = "session_id") -> pd.DataFrame:
    keys = [c for c in (key, "ts", "line_no") if c in events.columns]
    return events.sort_values(keys, kind="mergesort")


def session_sequences(events: pd.DataFrame, index: ItemIndex, key: str = "session_id", *,
                      with_times: bool = False):
    """Item-index sequence of every session (time order; items unknown to `index`
    dropped), in `key` order. key="user_id": one sequence per user, the user's
    sessions end to end in time order. with_times: (sequences, the events' `ts` (Unix s)
    in the same layout)."""
    ev = _ordered_sessions(events, key)
    idx = index.encode(ev["movie_id"].to_numpy())
    sid = ev[key].to_numpy()
    keep = idx >= 0
    idx, sid = idx[keep], sid[keep]
    ts = ev["ts"].to_numpy(np.int64)[keep] if with_times else None
    if len(sid) == 0:
        return ([], []) if with_times else []
    cuts = np.flatnonzero(np.diff(sid)) + 1
    seqs = np.split(idx.astype(np.int32), cuts)
    return (seqs, np.split(ts, cuts)) if with_times else seqs


def pack_lanes(sequences: list[np.ndarray], n_lanes: int, bptt: int, rng: np.random.Generator,
               target_horizon: int = 1, times: list[np.ndarray] | None = None,
               target_gap: timedelta = timedelta(0)):
    """Lay sessions (shuffled) end to end in `n_lanes` lanes; return arrays
    items, reset, targets, weights of shape [n_windows * n_lanes, bptt] where rows
    w * n_lanes + lane hold window w of each lane (feed in order, unshuffled).
    target_horizon > 1: each step's target is the item 1..target_horizon steps ahead
    (uniform, within the sequence; drawn again each call) instead of the next one.
    target_gap > 0 (needs `times`, the sequences' Unix seconds): a step with items at
    least that much later in its sequence takes one of them (uniform) as its target."""
    if target_gap > timedelta(0) and times is None:
        raise ValueError("pack_lanes: target_gap needs the sequences' times")
    keep = [k for k, s in enumerate(sequences) if len(s) >= 2]
    seqs = [sequences[k] for k in keep]
    order = rng.permutation(len(seqs))
    heap = [(0, lane) for lane in range(n_lanes)]
    lane_of = np.empty(len(seqs), dtype=np.int64)
    start_of = np.empty(len(seqs), dtype=np.int64)
    for k in order:
        used, lane = heapq.heappop(heap)
        lane_of[k], start_of[k] = lane, used
        heapq.heappush(heap, (used + len(seqs[k]) - 1, lane))
    total = max(used for used, _ in heap) if heap else 0
    n_windows = max(1, int(math.ceil(total / bptt)))
    width = n_windows * bptt
    items = np.zeros((n_lanes, width), dtype=np.int32)
    targets = np.zeros((n_lanes, width), dtype=np.int32)
    weights = np.zeros((n_lanes, width), dtype=np.float32)
    reset = np.ones((n_lanes, width), dtype=np.float32)  # padding: harmless resets
    if seqs:
        steps = np.array([len(s) - 1 for s in seqs])
        lane_rep = np.repeat(lane_of, steps)
        first = np.repeat(start_of, steps)
        offs = np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)
        pos = first + offs
        items[lane_rep, pos] = np.concatenate([s[:-1] for s in seqs])
        flat = np.concatenate(seqs)
        ends = np.cumsum(steps + 1)  # one past each sequence's last item in flat
        at = np.repeat(ends - steps - 1, steps) + offs  # each step's input item in flat
        left = np.repeat(ends, steps) - at - 1  # items after it in its sequence (>= 1)
        ahead = 1 if target_horizon <= 1 else \
            1 + (rng.random(len(at)) * np.minimum(target_horizon, left)).astype(np.int64)
        target_at = at + ahead
        if target_gap > timedelta(0):
            target_at = _beyond_gap(target_at, at, np.repeat(ends, steps), [times[k] for k in keep],
                                    target_gap, rng)
        targets[lane_rep, pos] = flat[target_at]
        weights[lane_rep, pos] = 1.0
        reset[lane_rep, pos] = (offs == 0).astype(np.float32)
    # [lanes, windows, bptt] -> [windows, lanes, bptt] -> rows
    def arrange(a):
        return a.reshape(n_lanes, n_windows, bptt).transpose(1, 0, 2).reshape(-1, bptt)

    return arrange(items), arrange(reset), arrange(targets), arrange(weights)


def _beyond_gap(target_at: np.ndarray, at: np.ndarray, end: np.ndarray, times: list[np.ndarray],
                gap: timedelta, rng: np.random.Generator) -> np.ndarray:
    """Each step's target position: uniform among its sequence's items rated at least
    `gap` after the step's item, where there are any; else `target_at` as given. `times`
    ascend within each sequence (session_sequences orders by time)."""
    lengths = np.array([len(t) for t in times], dtype=np.int64)
    flat_t = np.concatenate(times).astype(np.int64)
    # One sorted key over all sequences: each sequence gets its own band of seconds.
    band = int(flat_t.max() - flat_t.min()) + int(gap.total_seconds()) + 1
    key = np.repeat(np.arange(len(times), dtype=np.int64), lengths) * band + (flat_t - flat_t.min())
    first = np.searchsorted(key, key[at] + int(gap.total_seconds()), side="left")
    has = first < end
    drawn = first + (rng.random(len(at)) * np.maximum(end - first, 1)).astype(np.int64)
    return np.where(has, drawn, target_at)

