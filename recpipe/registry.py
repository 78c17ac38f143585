"""The registered recommenders: one line per model.

Kept free of heavy imports (the DAG files read it while Airflow parses them); the
module of a model is imported only when the model is used. Adding a model is one
module in recpipe/recommenders/ (defining RECOMMENDER) plus one line here.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str
    # Trains on the accelerator queue, in a fresh process (Keras/CUDA hold the process).
    accelerated: bool = False
    # A baseline: always published (the safety net); learned models must beat it.
    baseline: bool = False


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("popularity", "recpipe.recommenders.popularity", baseline=True),
    ModelSpec("ease", "recpipe.recommenders.ease", baseline=True),
    ModelSpec("itemknn", "recpipe.recommenders.itemknn", baseline=True),
    ModelSpec("autoint", "recpipe.recommenders.autoint", accelerated=True),
    ModelSpec("gru4rec", "recpipe.recommenders.gru4rec", accelerated=True),
)}


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(MODELS)}") from None


def recommender(name: str):
    """The model's Recommender (recpipe.recommenders.base), importing its module."""
    return import_module(spec(name).module).RECOMMENDER


def baseline_names() -> tuple[str, ...]:
    return tuple(n for n, s in MODELS.items() if s.baseline)
