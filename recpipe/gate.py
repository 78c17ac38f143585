"""The promotion gate: which candidate runs may publish their lists.

Rules and defaults live in gate.yaml (beside this file); every decision and every
reason is written to model_runs, and each failed rule raises an alert.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from recpipe.alerts import GATE_REJECTED, METRIC_REGRESSION, record_alert

log = logging.getLogger(__name__)
DEFAULT_RULES_FILE = Path(__file__).with_name("gate.yaml")


@dataclass(frozen=True)
class GateRules:
    tolerance: float = 0.10
    must_beat_popularity: bool = True
    compare_metric: str = "ndcg_at_10"
    min_test_users: int = 20
    floors: dict = field(default_factory=dict)  # model -> metric -> floor

    @classmethod
    def load(cls, overrides: dict | None = None, path: Path | None = None) -> "GateRules":
        """Rules from gate.yaml (or RECPIPE_GATE_FILE), then `overrides` on top.

        overrides["floors"] is merged per model and metric, so one floor can be
        changed without restating the others.
        """
        path = Path(path or os.environ.get("RECPIPE_GATE_FILE") or DEFAULT_RULES_FILE)
        data = yaml.safe_load(path.read_text()) or {}
        for key, value in (overrides or {}).items():
            if key == "floors":
                merged = {m: dict(v) for m, v in data.get("floors", {}).items()}
                for model, metrics in value.items():
                    merged.setdefault(model, {}).update(metrics)
                data["floors"] = merged
            elif key in cls.__dataclass_fields__:
                data[key] = value
            else:
                raise ValueError(f"unknown gate setting {key!r}")
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


def _last_promoted(conn, model: str, as_of) -> dict | None:
    row = conn.execute(
        sa.text("SELECT run_id, as_of, metrics FROM model_runs WHERE model = :m AND status = 'promoted'"
                " AND as_of < :t ORDER BY as_of DESC LIMIT 1"), {"m": model, "t": as_of}
    ).mappings().first()
    return dict(row) if row else None


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
    if rules.must_beat_popularity:
        metric = rules.compare_metric
        value, baseline = metrics.get(metric), (metrics.get("popularity") or {}).get(metric)
        if value is None or baseline is None or value <= baseline:
            failures.append({"rule": "beats_popularity", "metric": metric, "value": value, "threshold": baseline,
                             "message": f"{metric} {_fmt(value)} does not beat popularity's {_fmt(baseline)}"
                                        " on the same users"})
    return failures


def _fmt(value) -> str:
    return "missing" if value is None else f"{value:.4f}"


def gate_runs(engine: Engine, run_ids: list[int], rules: GateRules, context: str | None = None) -> list[Decision]:
    """Decide each candidate, record status and reasons, and alert on every rejection."""
    decisions = []
    for run_id in run_ids:
        with engine.begin() as conn:
            run = dict(conn.execute(sa.text("SELECT * FROM model_runs WHERE run_id = :r FOR UPDATE"),
                                    {"r": run_id}).mappings().one())
            if run["model"] == "popularity":
                # The baseline is the safety net: always published, never gated.
                failures, status = [], "promoted"
                reasons = [{"rule": "baseline", "message": "popularity is published every run"}]
            else:
                failures = judge(run, _last_promoted(conn, run["model"], run["as_of"]), rules)
                status = "rejected" if failures else "promoted"
                reasons = failures or [{"rule": "all", "message": "every rule passed"}]
            conn.execute(
                sa.text("UPDATE model_runs SET status = :s, gate_reasons = CAST(:g AS jsonb), decided_at = now()"
                        " WHERE run_id = :r"),
                {"s": status, "g": json.dumps(reasons, default=str), "r": run_id},
            )
        decision = Decision(run_id, run["model"], status == "promoted", reasons)
        decisions.append(decision)
        for failure in failures:
            kind = METRIC_REGRESSION if failure["rule"] == "regression" else GATE_REJECTED
            value = failure.get("value")
            threshold = failure.get("threshold")
            decision.alert_ids.append(record_alert(
                engine, kind=kind, model=run["model"], metric=failure.get("metric"),
                value=float(value) if isinstance(value, (int, float)) else None,
                threshold=float(threshold) if isinstance(threshold, (int, float)) else None,
                run_id=run_id, context=context,
                message=f"{run['model']} run {run_id} (as of {run['as_of']:%Y-%m-%d}) rejected: {failure['message']}",
            ))
        log.info("gate: %s run %s %s", run["model"], run_id, "promoted" if decision.promoted else "rejected")
    return decisions
