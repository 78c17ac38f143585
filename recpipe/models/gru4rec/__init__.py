"""GRU4Rec (session-based next-item recommendation) in Keras 3.

Model: item index -> embedding -> dropout -> GRU -> dropout -> logits over every
training item. Losses (`loss`): softmax cross-entropy over the full catalogue (about
3.1k items on MovieLens-1M sessions, so the full softmax is affordable), or, for large
catalogues, the official sampled losses: sampled softmax (with logQ correction) and
BPR-max (with score regularisation), whose candidates are the mini-batch's own targets
plus `n_sample` extra items drawn by popularity**sample_alpha, shared by the batch.
The default, `auto`, is the full softmax up to 4,096 items and sampled softmax above.
Sequences (`sequences`): each session, or each user's sessions end to end.

Batching: *session-parallel lanes, several steps per update* (truncated BPTT).
Training sessions (shuffled each epoch with a fixed seed) are laid end to end in
`batch_size` lanes, each new session going to the lane that is shortest so far.
A mini-batch is the next `bptt` positions of every lane: one GRU call of shape
[batch_size, bptt] followed by one large [batch_size * bptt, hidden] x [hidden, items]
output product. The GRU cell reads a reset flag at every position and zeroes its
hidden state where a session starts, so the state never leaks from one session into
the next, while within a long session it is carried from one window to the next
(stateful RNN; the gradient stops at window edges). Every next-item step of every
training session is trained on exactly once per epoch, as in the official
session-parallel scheme (which is the special case bptt=1), and padding is only the
ragged end of the lanes (< 1 % on ML-1M).
Why not whole padded sessions sorted by length: session lengths on ML-1M go from 3
to 765 events, so a batch of whole sessions holds from a few hundred to ~100k
events and the number of updates per epoch collapses; windows keep every update the
same size. Why not one step per update: a [128, 64] GRU step is too small to keep
two CPU cores busy and pays the per-call overhead at every event.

Input projections of the GRU are computed for all positions at once outside the
recurrence; the recurrent cell only does the hidden-to-hidden product. Everything is
`keras.ops` / Keras layers (no backend-specific code).

    config.py   GRU4RecConfig, SEED002_CONFIG, DEFAULT_CONFIG (and how it was chosen)
    layers.py   ResettableGRUCell, ItemScores, SampledItemLoss
    network.py  ItemIndex, the training/inference networks, GRU4RecBundle (save/load)
    data.py     session_sequences, pack_lanes
    fit.py      fit_gru4rec (validation injected by the caller)
"""
from importlib import import_module

# Lazy exports: importing the package (e.g. for its config) does not load Keras.
_EXPORTS = {
    "DEFAULT_CONFIG": "config",
    "SEED002_CONFIG": "config",
    "GRU4RecConfig": "config",
    "pack_lanes": "data",
    "session_sequences": "data",
    "fit_gru4rec": "fit",
    "ResettableGRUCell": "layers",
    "SampledItemLoss": "layers",
    "ItemScores": "layers",
    "CONFIG_FILE": "network",
    "INDEX_FILE": "network",
    "MODEL_FILE": "network",
    "GRU4RecBundle": "network",
    "ItemIndex": "network",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
