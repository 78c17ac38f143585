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
    # Models whose runs of the same night and phase this one is built from (trained
    # after them; the pipeline hands their run ids over in NightInputs.component_runs).
    needs: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("popularity", "recpipe.recommenders.popularity", baseline=True),
    ModelSpec("ease", "recpipe.recommenders.ease", baseline=True),
    ModelSpec("itemknn", "recpipe.recommenders.itemknn", baseline=True),
    ModelSpec("autoint", "recpipe.recommenders.autoint", accelerated=True),
    ModelSpec("gru4rec", "recpipe.recommenders.gru4rec", accelerated=True),
    ModelSpec("twostage", "recpipe.recommenders.twostage", needs=("autoint", "gru4rec", "ease", "popularity")),
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


def with_needs(models) -> tuple[str, ...]:
    """`models` plus every model they need, transitively (registry order)."""
    wanted: set[str] = set()
    stack = list(models)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(spec(name).needs)
    return tuple(n for n in MODELS if n in wanted)


def training_order(models=None) -> tuple[str, ...]:
    """`models` (default: all) ordered so each comes after the models it needs; a
    needed model missing from `models`, or a cycle, is a ValueError."""
    models = tuple(MODELS) if models is None else tuple(models)
    chosen = set(models)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"models need each other in a cycle: {' -> '.join((*path, name))}")
        state[name] = "visiting"
        for needed in spec(name).needs:
            if needed not in chosen:
                raise ValueError(f"{name} needs the night's {needed} run: train {needed} too")
            visit(needed, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in models:
        visit(name, ())
    return tuple(order)
