"""AutoInt+ hyperparameters: the config dataclass and the named configs, with how each was chosen."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping


OPTIMIZERS = ("adamw", "lazy_adam")


@dataclass(frozen=True)
class AutoIntConfig:
    """Every hyperparameter of AutoInt+ and of its training."""

    embed_dim: int = 32
    att_layers: int = 3
    att_heads: int = 2
    att_res: bool = True
    att_scaling: bool = False
    layer_norm: bool = False
    dnn_units: tuple[int, ...] = (32, 32)
    dropout: float = 0.3  # inside the DNN tower only, never on the logit
    l2_dnn: float = 1e-3  # l2 on the DNN tower's kernels (hidden layers and logit)
    l2_embedding: float = 0.0  # l2 on the embedding rows looked up in a batch
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5  # AdamW decoupled weight decay; 0 -> plain Adam
    # "adamw": Keras's (dense: every embedding row moves at every step, a cost that grows
    # with the users and movies); "lazy_adam": only the rows a batch looks up move, with
    # their weight decay (recpipe.models.lazy_adam; bench/autoint_tables.py). The default
    # stays dense: on the production protocol the lazy one scored lower (README, Scale).
    optimizer: str = "adamw"
    decay_steps: int = 100  # ExponentialDecay of the learning rate; 0 -> constant
    decay_rate: float = 0.96
    batch_size: int = 2048
    epochs: int = 10
    patience: int = 10  # EarlyStopping on val loss (best weights restored)
    val_fraction: float = 0.1  # last rows of X when no X_val is given
    seed: int = 42

    def __post_init__(self):
        object.__setattr__(self, "dnn_units", tuple(int(u) for u in self.dnn_units))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {list(OPTIMIZERS)}")
        if self.embed_dim % self.att_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of att_heads {self.att_heads}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dnn_units"] = list(self.dnn_units)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoIntConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AutoIntConfig keys: {sorted(unknown)}")
        return cls(**dict(data))

    def with_(self, **changes) -> "AutoIntConfig":
        return replace(self, **changes)


# Seed 000's best run (its cell with NDCG 0.65974 / "hitrate" 0.62713): embedding 32,
# 3 interacting layers x 2 heads with residual, DNN (32, 32), dropout 0.3, l2 1e-3 on the
# DNN, AdamW(lr 1e-4, weight decay 1e-5) with ExponentialDecay(100 steps, 0.96), batch
# 2048, 10 epochs. Its head bug is not reproduced (see module docstring). patience=10
# means no early stop within 10 epochs (the seed had none); the best epoch is restored.
SEED000_CONFIG = AutoIntConfig()

# DEFAULT_CONFIG: chosen by a small search on seed 000's split, selecting on the
# validation part only (last 10% of the 80% train part; the 20% test part was not looked
# at while choosing). The search ran on a borrowed H100 under KERAS_BACKEND=torch (same
# code, keras.ops), 10 epochs max, EarlyStopping(patience 2); figures are val AUC /
# val log-loss:
#   SEED000_CONFIG                                   0.794 / 0.539 (still improving at
#       epoch 10: its lr 1e-4 decays x0.96 per 100 steps, to 2.4e-5 by the end)
#   lr 2e-3, ExponentialDecay(400, 0.9), att_scaling, DNN (64, 32), dropout 0.2,
#       l2_dnn 1e-5, l2_embedding 1e-6  ("base")        0.819 / 0.511
#   base, constant lr 1e-3                           0.818 / 0.511
#   base, embed 16                                   0.817 / 0.511
#   base, DNN (128, 64)                              0.819 / 0.510
#   base, DNN (256, 128), dropout 0.3  ("A")         0.820 / 0.509
#   A + l2_embedding 1e-5                            0.820 / 0.509
#   A + layer_norm                                   0.813 / 0.518
#   A, 2 interacting layers                          0.820 / 0.509  <- chosen
#   A, batch 4096, lr 4e-3                           0.819 / 0.510
#   A, embed 16                                      0.820 / 0.509
#   A, weight decay 1e-4                             0.820 / 0.509
# The learning rate is what matters (the seed's decays to nothing); the rest is within
# noise, so the cheaper of the best (2 interacting layers instead of 3) was chosen.
# Caveat: the same code and config score lower under TensorFlow on CPU than under torch
# (seed-000 test split: AUC 0.802 / log-loss 0.530 / NDCG 0.672 on TF vs 0.815 / 0.516 /
# 0.678 on torch; SEED000_CONFIG's curves match across the two). Not yet explained.
DEFAULT_CONFIG = AutoIntConfig(
    embed_dim=32,
    att_layers=2,
    att_heads=2,
    att_res=True,
    att_scaling=True,
    layer_norm=False,
    dnn_units=(256, 128),
    dropout=0.3,
    l2_dnn=1e-5,
    l2_embedding=1e-6,
    learning_rate=2e-3,
    weight_decay=1e-5,
    decay_steps=400,
    decay_rate=0.9,
    batch_size=2048,
    epochs=10,
    patience=2,
)

