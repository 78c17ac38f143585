"""The night plan: one frozen value that says what a night does, built once per night.

`run_nightly` and the DAG's first task build it (and validate every parameter before
anything runs); every stage receives it explicitly, through XCom as JSON and to the
training process in its request file. No stage reads the environment for these.

Two instants: `night` (T, the lists are "as of" T, every rating before T is the
users' history) and `training_cutoff` (T - eval_window: models train before it and
are judged on [cutoff, T)). Stages hand each other ids, never re-find them by time.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from recpipe.config import PipelineParams

# Lists are top-10: metric names (ndcg_at_10), the gate rules and the analysts' views
# all say 10, so the list length is a constant of the product, not a knob.
LIST_LENGTH = 10


GATED, REFIT = "gated", "refit"
PHASES = (GATED, REFIT)
SHIP_CHOICES = (REFIT, GATED)
FULL, WARM_START = "full", "warm_start"
REFIT_MODES = (FULL, WARM_START)
MAX_WARM_START_EPOCHS = 100


MAX_SHARDS = 256


class PlanError(ValueError):
    """A parameter of the night is invalid: nothing has run."""


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


@dataclass(frozen=True)
class NightPlan:
    night: datetime
    eval_window: timedelta
    retention: timedelta
    models: tuple[str, ...]
    epochs: int | None = None
    model_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    gate_overrides: Mapping[str, Any] = field(default_factory=dict)
    gate_rules: Mapping[str, Any] = field(default_factory=dict)  # the rules file + overrides, resolved
    dry_run: bool = False
    ship: str = "refit"  # or "gated": see PipelineParams.ship
    session_params: Mapping[str, Any] = field(default_factory=dict)
    context: str | None = None  # which Airflow run (for alert rows), when there is one
    scoring_shards: int = 1  # user shards the lists are scored in (Airflow maps one task per shard)
    refit: str = FULL  # or "warm_start": see PipelineParams.refit
    warm_start_epochs: int = 2  # a warm-started refit's epochs

    @property
    def training_cutoff(self) -> datetime:
        return self.night - self.eval_window

    def train_until(self, phase: str) -> datetime:
        """Training data end of a phase: the cutoff for the gated run, the night for the refit."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        return self.training_cutoff if phase == GATED else self.night

    @property
    def refits(self) -> bool:
        return self.ship == REFIT

    @property
    def k(self) -> int:
        return LIST_LENGTH

    @classmethod
    def build(cls, night: datetime, params: PipelineParams | None = None, *, models: tuple[str, ...] | None = None,
              epochs: int | None = None, model_overrides: Mapping | None = None,
              gate_overrides: Mapping | None = None, dry_run: bool = False,
              session_params: Mapping | None = None, context: str | None = None,
              eval_window: timedelta | None = None, gate_file=None, ship: str | None = None,
              scoring_shards: int | None = None, refit: str | None = None,
              warm_start_epochs: int | None = None) -> "NightPlan":
        """A validated plan: bad parameters raise PlanError before anything runs."""
        from dataclasses import asdict as _asdict

        from recpipe import registry
        from recpipe.gate import GateRules

        params = params or PipelineParams()
        try:
            rules = _asdict(GateRules.load(gate_overrides, gate_file))
        except (ValueError, TypeError) as exc:
            raise PlanError(str(exc)) from exc
        if not isinstance(night, datetime):
            raise PlanError(f"the night must be a date-time, got {night!r}")
        night = night if night.tzinfo else night.replace(tzinfo=timezone.utc)
        plan = cls(
            night=night.astimezone(timezone.utc),
            eval_window=eval_window or params.eval_window,
            retention=params.retention,
            models=tuple(models) if models is not None else registry.names(),
            epochs=epochs,
            model_overrides={k: dict(v or {}) for k, v in (model_overrides or {}).items()},
            gate_overrides=dict(gate_overrides or {}),
            gate_rules=rules,
            dry_run=bool(dry_run),
            ship=ship or params.ship,
            session_params=dict(session_params or {}),
            context=context,
            scoring_shards=params.scoring_shards if scoring_shards is None else scoring_shards,
            refit=refit or params.refit,
            warm_start_epochs=params.warm_start_epochs if warm_start_epochs is None else warm_start_epochs,
        )
        plan.validate()
        return plan

    def validate(self) -> None:
        from recpipe import registry

        if self.ship not in SHIP_CHOICES:
            raise PlanError(f"ship must be one of {SHIP_CHOICES}, got {self.ship!r}")
        if self.refit not in REFIT_MODES:
            raise PlanError(f"refit must be one of {REFIT_MODES}, got {self.refit!r}")
        if isinstance(self.warm_start_epochs, bool) or not isinstance(self.warm_start_epochs, int) \
                or not 1 <= self.warm_start_epochs <= MAX_WARM_START_EPOCHS:
            raise PlanError(f"warm_start_epochs must be an integer in [1, {MAX_WARM_START_EPOCHS}],"
                            f" got {self.warm_start_epochs!r}")
        if isinstance(self.scoring_shards, bool) or not isinstance(self.scoring_shards, int) \
                or not 1 <= self.scoring_shards <= MAX_SHARDS:
            raise PlanError(f"scoring_shards must be an integer in [1, {MAX_SHARDS}], got {self.scoring_shards!r}")
        if self.eval_window <= timedelta(0):
            raise PlanError(f"eval_window must be positive, got {self.eval_window}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise PlanError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        try:
            for name in self.models:
                registry.spec(name)
            registry.training_order(self.models)  # every needed model is trained tonight too
            for name in self.model_overrides:
                if name not in self.models:
                    raise ValueError(f"overrides for {name!r}, which is not trained tonight ({', '.join(self.models)})")
            if not any(registry.spec(m).baseline for m in self.models):
                raise ValueError(f"a night needs a baseline model ({', '.join(registry.baseline_names())}):"
                                 " it is the fallback list")
            for name in self.models:
                self.model_config(name)
            from recpipe.gate import GateRules

            GateRules(**self.gate_rules)
            if self.session_params:
                from recpipe.sessions import SessionParams

                SessionParams.from_dict(self.session_params)
        except (ValueError, TypeError) as exc:
            raise PlanError(str(exc)) from exc

    def model_config(self, name: str) -> dict:
        """The full, validated config of `name` tonight (defaults + overrides + epochs)."""
        from recpipe import registry

        return registry.recommender(name).make_config(self.model_overrides.get(name), self.epochs)

    def with_(self, **changes) -> "NightPlan":
        return replace(self, **changes)

    # JSON: what XCom and the training request carry.
    def to_dict(self) -> dict:
        out = asdict(self)
        out["night"] = self.night.isoformat()
        for name in ("eval_window", "retention"):
            out[name] = {"seconds": _seconds(getattr(self, name))}
        out["models"] = list(self.models)
        out["model_overrides"] = {k: dict(v) for k, v in self.model_overrides.items()}
        out["gate_overrides"] = dict(self.gate_overrides)
        out["gate_rules"] = dict(self.gate_rules)
        out["session_params"] = dict(self.session_params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "NightPlan":
        values = dict(data)
        values["night"] = datetime.fromisoformat(values["night"])
        for name in ("eval_window", "retention"):
            values[name] = timedelta(seconds=float(values[name]["seconds"]))
        values["models"] = tuple(values["models"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NightPlan":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class NightInputs:
    """Ids the rebuild stages hand to training: the encoders artifact, the session build."""

    encodings_id: int | None = None
    sessions_build_id: int | None = None
    # model -> run id of the same night and phase, for a model that needs others (ModelSpec.needs)
    component_runs: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"encodings_id": self.encodings_id, "sessions_build_id": self.sessions_build_id,
                "component_runs": {k: int(v) for k, v in self.component_runs.items()}}

    def with_components(self, component_runs: Mapping[str, int]) -> "NightInputs":
        return replace(self, component_runs={k: int(v) for k, v in component_runs.items()})

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "NightInputs":
        data = data or {}
        return cls(encodings_id=data.get("encodings_id"), sessions_build_id=data.get("sessions_build_id"),
                   component_runs={k: int(v) for k, v in (data.get("component_runs") or {}).items()})
