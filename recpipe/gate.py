"""The promotion gate: which candidate runs may publish their lists.

Rules and defaults live in gate.yaml (Settings.gate_file); overrides are checked
against the rules' schema (known keys, types, ranges) before anything runs. Every
decision and every reason is written to the run registry, and each failed rule
raises an alert.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from sqlalchemy.engine import Engine

from recpipe import runs
from recpipe.alerts import GATE_REJECTED, METRIC_REGRESSION, record_alert
from recpipe.config import DEFAULT_GATE_FILE

log = logging.getLogger(__name__)
# Production-protocol metrics a rule may name (the list length is 10: recpipe.plan).
GATED_METRICS = ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10", "auc", "log_loss")


class GateRuleError(ValueError):
    """A gate setting that is unknown or of the wrong type or range."""


def _number(key: str, value, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateRuleError(f"gate setting {key!r} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise GateRuleError(f"gate setting {key!r} must be within [{low}, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GateRules:
    tolerance: float = 0.10
    must_beat_baseline: bool = True
    compare_metric: str = "ndcg_at_10"
    min_test_users: int = 20
    floors: dict = field(default_factory=dict)  # model -> metric -> floor

    def __post_init__(self):
        from recpipe import registry

        _number("tolerance", self.tolerance, 0.0, 1.0)
        if not isinstance(self.must_beat_baseline, bool):
            raise GateRuleError(f"gate setting 'must_beat_baseline' must be true or false,"
                                f" got {self.must_beat_baseline!r}")
        if self.compare_metric not in GATED_METRICS:
            raise GateRuleError(f"gate setting 'compare_metric' must be one of {GATED_METRICS},"
                                f" got {self.compare_metric!r}")
        if isinstance(self.min_test_users, bool) or not isinstance(self.min_test_users, int) \
                or self.min_test_users < 0:
            raise GateRuleError(f"gate setting 'min_test_users' must be an integer >= 0, got {self.min_test_users!r}")
        if not isinstance(self.floors, dict):
            raise GateRuleError(f"gate setting 'floors' must be an object, got {self.floors!r}")
        for model, metrics in self.floors.items():
            registry.spec(model)
            if not isinstance(metrics, dict):
                raise GateRuleError(f"floors of {model!r} must be an object of metric: floor")
            for metric, floor in metrics.items():
                if metric not in GATED_METRICS:
                    raise GateRuleError(f"unknown metric {metric!r} in the floors of {model!r};"
                                        f" known: {GATED_METRICS}")
                _number(f"floors.{model}.{metric}", floor)

    @classmethod
    def load(cls, overrides: dict | None = None, path: Path | None = None) -> "GateRules":
        """Rules from the rules file, then `overrides` on top.

        overrides["floors"] is merged per model and metric, so one floor can be
        changed without restating the others.
        """
        data = yaml.safe_load(Path(path or DEFAULT_GATE_FILE).read_text()) or {}
        known = {f.name for f in fields(cls)}
        for key, value in {**data, **(overrides or {})}.items():
            if key not in known:
                raise GateRuleError(f"unknown gate setting {key!r}; known: {sorted(known)}")
        for key, value in (overrides or {}).items():
            if key == "floors":
                if not isinstance(value, dict):
                    raise GateRuleError(f"gate setting 'floors' must be an object, got {value!r}")
                merged = {m: dict(v) for m, v in data.get("floors", {}).items()}
                for model, metrics in value.items():
                    if not isinstance(metrics, dict):
                        raise GateRuleError(f"floors of {model!r} must be an object of metric: floor")
                    merged.setdefault(model, {}).update(metrics)
                data["floors"] = merged
            else:
                data[key] = value
        return cls(**data)


@dataclass
class Decision:
    run_id: int
    model: str
    promoted: bool
    reasons: list[dict]
    alert_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "model": self.model, "promoted": self.promoted, "reasons": self.reasons,
                "alert_ids": self.alert_ids}


def best_baseline(metrics: dict, metric: str) -> tuple[str | None, float | None]:
    """(name, value) of the best baseline on `metric` among metrics["baselines"]."""
    scored = [(name, b.get(metric)) for name, b in (metrics.get("baselines") or {}).items()
              if b.get(metric) is not None]
    return max(scored, key=lambda nv: nv[1]) if scored else (None, None)


def judge(run: dict, previous: dict | None, rules: GateRules) -> list[dict]:
    """The failed rules of one candidate (empty: promote). Pure: no database."""
    metrics = (run.get("metrics") or {}).get("production") or {}
    failures: list[dict] = []
    if not metrics:
        return [{"rule": "evaluated", "message": "no production-protocol metrics: evaluate the run first"}]
    users = metrics.get("users", 0)
    if users < rules.min_test_users:
        failures.append({"rule": "min_test_users", "metric": "users", "value": users,
                         "threshold": rules.min_test_users,
                         "message": f"only {users} test users (< {rules.min_test_users}): not enough evidence"})
    for metric, floor in (rules.floors.get(run["model"]) or {}).items():
        value = metrics.get(metric)
        if value is None or value < floor:
            failures.append({"rule": "floor", "metric": metric, "value": value, "threshold": floor,
                             "message": f"{metric} {_fmt(value)} is below its floor {floor}"})
    if previous is not None:
        before = (previous.get("metrics") or {}).get("production") or {}
        for metric in rules.floors.get(run["model"]) or {}:
            old, new = before.get(metric), metrics.get(metric)
            if old is None or new is None or old <= 0:
                continue
            allowed = old * (1 - rules.tolerance)
            if new < allowed:
                failures.append({
                    "rule": "regression", "metric": metric, "value": new, "threshold": allowed,
                    "previous_run_id": previous["run_id"],
                    "message": f"{metric} fell from {old:.4f} (run {previous['run_id']}) to {new:.4f},"
                               f" more than the {rules.tolerance:.0%} tolerance (floor {allowed:.4f})",
                })
    if rules.must_beat_baseline:
        metric = rules.compare_metric
        value = metrics.get(metric)
        name, baseline = best_baseline(metrics, metric)
        if value is None or baseline is None or value <= baseline:
            failures.append({"rule": "beats_baseline", "metric": metric, "value": value, "threshold": baseline,
                             "baseline": name,
                             "message": f"{metric} {_fmt(value)} does not beat the best baseline"
                                        f" ({name or 'none'}: {_fmt(baseline)}) on the same users"})
    return failures


def _fmt(value) -> str:
    return "missing" if value is None else f"{value:.4f}"


def gate_runs(engine: Engine, run_ids: list[int], rules: GateRules, context: str | None = None,
              alert: bool = True) -> list[Decision]:
    """Decide each candidate, record status and reasons, and alert on every rejection
    (alert=False for dry runs: their decisions are recorded on their own runs only)."""
    decisions = []
    for run_id in run_ids:
        with engine.begin() as conn:
            run = runs.get(conn, run_id, for_update=True)
            if run.is_baseline:
                # A baseline is the safety net: always published, never gated.
                failures, status = [], runs.PROMOTED
                reasons = [{"rule": "baseline", "message": f"{run.model} is a baseline, published every night"}]
            else:
                previous = runs.last_promoted(conn, run.model, run.as_of)
                failures = judge({"model": run.model, "metrics": run.metrics},
                                 {"run_id": previous.run_id, "metrics": previous.metrics} if previous else None, rules)
                status = runs.REJECTED if failures else runs.PROMOTED
                reasons = failures or [{"rule": "all", "message": "every rule passed"}]
            runs.decide(conn, run_id, status, reasons)
        decision = Decision(run_id, run.model, status == runs.PROMOTED, reasons)
        decisions.append(decision)
        for failure in failures if alert else []:
            kind = METRIC_REGRESSION if failure["rule"] == "regression" else GATE_REJECTED
            value, threshold = failure.get("value"), failure.get("threshold")
            decision.alert_ids.append(record_alert(
                engine, kind=kind, model=run.model, metric=failure.get("metric"),
                value=float(value) if isinstance(value, (int, float)) else None,
                threshold=float(threshold) if isinstance(threshold, (int, float)) else None,
                run_id=run_id, context=context,
                message=f"{run.model} run {run_id} (as of {run.as_of:%Y-%m-%d}) rejected: {failure['message']}",
            ))
        log.info("gate: %s run %s %s", run.model, run_id, "promoted" if decision.promoted else "rejected")
    return decisions
