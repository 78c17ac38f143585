"""The promotion gate: which candidate runs may publish their lists.

Rules and defaults live in gate.yaml (Settings.gate_file); overrides are checked
against the rules' schema (known keys, types, ranges) before anything runs. Every
decision and every reason is written to the run registry, and each failed rule
raises an alert.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine

from recpipe import runs
from recpipe.alerts import DATA_GATE, GATE_REJECTED, METRIC_REGRESSION, record_alert
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
class DataRules:
    """The data-quality gate, checked before anything trains (gate.yaml's `data:`)."""

    max_rejected_share: float = 0.05  # quarantined / read, ratings lines of the night's ingest batches
    min_new_ratings: int = 1  # ratings rated since the previous night (or in the last day)
    max_vanished_user_share: float = 0.01  # users with ratings at the previous night, none now
    max_vanished_movie_share: float = 0.01  # the same for movies

    def __post_init__(self):
        for key in ("max_rejected_share", "max_vanished_user_share", "max_vanished_movie_share"):
            _number(f"data.{key}", getattr(self, key), 0.0, 1.0)
        if isinstance(self.min_new_ratings, bool) or not isinstance(self.min_new_ratings, int) \
                or self.min_new_ratings < 0:
            raise GateRuleError(f"gate setting 'data.min_new_ratings' must be an integer >= 0,"
                                f" got {self.min_new_ratings!r}")

    @classmethod
    def from_dict(cls, data) -> "DataRules":
        if isinstance(data, DataRules):
            return data
        if not isinstance(data, dict):
            raise GateRuleError(f"gate setting 'data' must be an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise GateRuleError(f"unknown gate setting 'data.{key}'; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class GateRules:
    tolerance: float = 0.10
    must_beat_baseline: bool = True
    compare_metric: str = "ndcg_at_10"
    min_test_users: int = 20
    floors: dict = field(default_factory=dict)  # model -> metric -> floor
    # The refit's sanity checks against its gated run, on the same users as of the night:
    refit_min_served_ratio: float = 0.9  # users served without fallback, refit / gated
    refit_min_coverage_ratio: float = 0.5  # distinct movies in the lists, refit / gated
    refit_min_overlap: float = 0.01  # mean Jaccard of each user's two top-10s (random lists: ~0.001)
    # ... and on the night's last days: the refit's compare_metric may trail the gated run's
    # by at most this share. The refit trained on those days, so it can only look better
    # there: falling behind means it is broken, not that the future changed.
    refit_holdout_days: int = 7
    refit_max_holdout_drop: float = 0.5
    data: DataRules = field(default_factory=DataRules)

    def __post_init__(self):
        from recpipe import registry

        # A plan carries the rules as JSON: `data` comes back as a dict.
        object.__setattr__(self, "data", DataRules.from_dict(self.data))

        _number("tolerance", self.tolerance, 0.0, 1.0)
        for key in ("refit_min_served_ratio", "refit_min_coverage_ratio", "refit_min_overlap",
                    "refit_max_holdout_drop"):
            _number(key, getattr(self, key), 0.0, 1.0)
        if isinstance(self.refit_holdout_days, bool) or not isinstance(self.refit_holdout_days, int) \
                or not 0 <= self.refit_holdout_days <= 60:
            raise GateRuleError(f"gate setting 'refit_holdout_days' must be an integer in [0, 60] (0: no holdout"
                                f" check), got {self.refit_holdout_days!r}")
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

        overrides["floors"] is merged per model and metric, and overrides["data"] per
        key, so one floor or data rule can be changed without restating the others.
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
            elif key == "data":
                if not isinstance(value, dict):
                    raise GateRuleError(f"gate setting 'data' must be an object, got {value!r}")
                data["data"] = {**(data.get("data") or {}), **value}
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


MIN_HOLDOUT_USERS = 5
REFIT_SAMPLE_USERS = 1000  # users the two runs are compared on (every n-th known user)


def refit_checks(gated_lists, refit_lists, users, rules: GateRules) -> list[dict]:
    """The failed checks of a refit against its gated run's lists (empty: ship it). Pure."""
    import numpy as np

    failures = []

    def ratio_check(rule, metric, count, floor, what):
        gated, refit = count(gated_lists), count(refit_lists)
        ratio = refit / gated if gated else 1.0
        if ratio < floor:
            failures.append({"rule": rule, "metric": metric, "value": ratio, "threshold": floor,
                             "message": f"the refit {what} {refit}, the gated run {gated} (ratio {ratio:.2f})"})

    ratio_check("refit_served_users", "served_ratio", lambda l: l.loc[~l["fallback"], "user_id"].nunique(),
                rules.refit_min_served_ratio, f"serves without fallback, of {len(users)} users,")
    ratio_check("refit_coverage", "coverage_ratio", lambda l: l["movie_id"].nunique(),
                rules.refit_min_coverage_ratio, "lists distinct movies:")
    scores = refit_lists.loc[~refit_lists["fallback"], "score"].to_numpy(dtype=float)
    if len(scores) and (not np.isfinite(scores).all() or np.ptp(scores) == 0):
        failures.append({"rule": "refit_scores", "metric": "score_spread", "value": float(np.nan_to_num(np.ptp(scores))),
                         "threshold": 0.0, "message": "the refit's scores are not finite or all equal"})
    a = gated_lists.groupby("user_id")["movie_id"].agg(frozenset)
    b = refit_lists.groupby("user_id")["movie_id"].agg(frozenset)
    common = a.index.intersection(b.index)
    overlap = float(np.mean([len(a[u] & b[u]) / len(a[u] | b[u]) for u in common])) if len(common) else 0.0
    if overlap < rules.refit_min_overlap:
        failures.append({"rule": "refit_overlap", "metric": "list_overlap", "value": overlap,
                         "threshold": rules.refit_min_overlap,
                         "message": f"the refit's lists share {overlap:.3f} (mean Jaccard) with the gated run's"})
    return failures


REFIT_HOLDOUT_USERS = 200  # users of the last days the two runs are compared on


def refit_holdout(store, gated, refit, night, rules: GateRules, k: int) -> dict:
    """Both runs' compare_metric on the positives of [night - refit_holdout_days, night),
    each user's earlier ratings as history; a failure when the refit trails by more than
    refit_max_holdout_drop. Too few users there: no verdict (said in the message)."""
    from datetime import timedelta

    from recpipe.evaluation.production import holdout_metric

    if not rules.refit_holdout_days:
        return {"failures": [], "message": "no holdout check (refit_holdout_days 0)"}
    start = night - timedelta(days=rules.refit_holdout_days)
    metric = rules.compare_metric
    values, users = holdout_metric(store, [gated, refit], start, night, k, metric, REFIT_HOLDOUT_USERS)
    if users < MIN_HOLDOUT_USERS:
        return {"failures": [], "message": f"last {rules.refit_holdout_days} days hold {users} users: no holdout check"}
    gated_value, refit_value = values[gated.run_id], values[refit.run_id]
    message = (f"{metric} on the last {rules.refit_holdout_days} days ({users} users): refit {refit_value:.4f},"
               f" gated {gated_value:.4f}")
    floor = (1 - rules.refit_max_holdout_drop) * gated_value
    if refit_value < floor:
        return {"failures": [{"rule": "refit_holdout", "metric": f"holdout_{metric}", "value": refit_value,
                              "threshold": floor, "message": message}], "message": message}
    return {"failures": [], "message": message}


def check_refit(engine: Engine, store, history, gated, refit, rules: GateRules, k: int,
                context: str | None = None) -> Decision:
    """Score both runs for a sample of users as of the night, record the refit's verdict
    and alert on each failed check. A rejected refit is not shipped; its gated run is."""
    from recpipe.scoring import LoadedRun, recommend

    users = history.users[:: max(1, len(history.users) // REFIT_SAMPLE_USERS)]
    last = []  # no fallback: users a run cannot serve stay unserved, which is what is compared
    gated_lists = recommend(LoadedRun(store, gated), history, users, k, last)
    refit_lists = recommend(LoadedRun(store, refit), history, users, k, last)
    failures = refit_checks(gated_lists, refit_lists, users, rules)
    holdout = refit_holdout(store, gated, refit, history.as_of, rules, k)
    failures += holdout["failures"]
    status = runs.REJECTED if failures else runs.PROMOTED
    reasons = failures or [{"rule": "refit_checks", "message": f"refit of gated run {gated.run_id} passed its checks"
                                                               f" on {len(users)} users; {holdout['message']}"}]
    with engine.begin() as conn:
        runs.decide(conn, refit.run_id, status, reasons)
    decision = Decision(refit.run_id, refit.model, not failures, reasons)
    for failure in failures:
        decision.alert_ids.append(record_alert(
            engine, kind=GATE_REJECTED, model=refit.model, metric=failure["metric"], value=float(failure["value"]),
            threshold=float(failure["threshold"]), run_id=refit.run_id, context=context,
            message=f"{refit.model} refit run {refit.run_id} (as of {refit.as_of:%Y-%m-%d}) not shipped, its gated run"
                    f" {gated.run_id} is: {failure['rule']}: {failure['message']}"))
    log.info("refit check: %s run %s %s", refit.model, refit.run_id, "passed" if decision.promoted else "failed")
    return decision


# ---------------------------------------------------------------------------------------
# The data-quality gate: before training, is tonight's data fit to train on?
# ---------------------------------------------------------------------------------------
class DataGateError(RuntimeError):
    """A data rule fired: the night stops before training (nothing new is published)."""

    def __init__(self, message: str, check_id: int | None = None, alert_ids: list[int] | None = None):
        super().__init__(message)
        self.check_id = check_id
        self.alert_ids = list(alert_ids or [])


@dataclass
class DataCheck:
    check_id: int
    night: datetime
    figures: dict
    fired: list[dict]
    alert_ids: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.fired

    def message(self) -> str:
        """One line: the night, and each fired rule with its figure."""
        if self.passed:
            return f"data check {self.check_id} of the night {self.night:%Y-%m-%d %H:%M}Z passed"
        return (f"the data gate stopped the night {self.night:%Y-%m-%d %H:%M}Z (data check {self.check_id}): "
                + "; ".join(f"{f['rule']}: {f['message']}" for f in self.fired))

    def to_dict(self) -> dict:
        return {"check_id": self.check_id, "night": self.night.isoformat(), "passed": self.passed,
                "figures": self.figures, "fired": self.fired, "alert_ids": self.alert_ids,
                "message": self.message()}


def judge_data(figures: dict, rules: DataRules) -> list[dict]:
    """The data rules that fire on a night's figures (empty: train). Pure: no database."""
    fired = []
    share = figures["rejected_share"]
    if share > rules.max_rejected_share:
        fired.append({"rule": "max_rejected_share", "metric": "rejected_share", "value": share,
                      "threshold": rules.max_rejected_share,
                      "message": f"{figures['rejected']} of the {figures['lines_read']} ratings lines ingested for"
                                 f" the night were quarantined ({share:.2%} > {rules.max_rejected_share:.2%})"})
    if figures["new_ratings"] < rules.min_new_ratings:
        fired.append({"rule": "min_new_ratings", "metric": "new_ratings", "value": figures["new_ratings"],
                      "threshold": rules.min_new_ratings,
                      "message": f"{figures['new_ratings']} ratings rated since {figures['since']}"
                                 f" (fewer than {rules.min_new_ratings})"})
    for what, limit in (("user", rules.max_vanished_user_share), ("movie", rules.max_vanished_movie_share)):
        share = figures[f"vanished_{what}_share"]
        if share is not None and share > limit:
            fired.append({"rule": f"max_vanished_{what}_share", "metric": f"vanished_{what}_share", "value": share,
                          "threshold": limit,
                          "message": f"{figures[f'vanished_{what}s']} of the {figures[f'previous_{what}s']} {what}s"
                                     f" with ratings at the previous night ({figures['previous_night']}) have none"
                                     f" now ({share:.2%} > {limit:.2%})"})
    return fired


def data_figures(conn, night: datetime, since: datetime, previous_check_id: int | None) -> tuple[dict, list, list]:
    """(figures, user ids, movie ids with a rating before the night) from data_check_figures.sql."""
    from recpipe.db import statement

    row = conn.execute(statement("data_check_figures"),
                       {"night": night, "since": since, "previous_check": previous_check_id}).mappings().one()
    lines, rejected = int(row["lines_read"]), int(row["rejected"])
    figures = {"since": since.isoformat(), "batch_ids": [int(b) for b in row["batch_ids"]], "lines_read": lines,
               "rejected": rejected, "rejected_share": rejected / lines if lines else 0.0,
               "new_ratings": int(row["new_ratings"]), "users": len(row["user_ids"] or []),
               "movies": len(row["movie_ids"] or [])}
    for what in ("user", "movie"):
        previous = row[f"previous_{what}s"]
        vanished = row[f"vanished_{what}s"]
        figures[f"previous_{what}s"] = previous
        figures[f"vanished_{what}s"] = vanished
        figures[f"vanished_{what}_share"] = vanished / previous if previous else None
    return figures, list(row["user_ids"] or []), list(row["movie_ids"] or [])


def check_data(engine: Engine, night: datetime, rules: DataRules, *, retention: timedelta = timedelta(days=30),
               context: str | None = None, dry_run: bool = False, alert: bool = True) -> DataCheck:
    """Compute the night's data figures, judge them, record the check (data_checks) and
    alert on each fired rule (not for dry runs). Raises nothing: the caller stops the night.

    The previous night is the newest earlier night that was gated (non-dry-run runs
    decided); its passed data check holds the users and movies present then.
    """
    import json

    from recpipe.db import statement

    started = time.perf_counter()
    with engine.begin() as conn:
        previous = conn.execute(statement("data_check_previous"), {"night": night}).mappings().first()
        previous_night = previous["night"] if previous is not None else None
        since = previous_night or night - timedelta(days=1)
        figures, user_ids, movie_ids = data_figures(conn, night, since,
                                                    previous["check_id"] if previous is not None else None)
        figures["previous_night"] = previous_night.isoformat() if previous_night is not None else None
        fired = judge_data(figures, rules)
        figures["seconds"] = round(time.perf_counter() - started, 3)
        check_id = conn.execute(statement("data_check_record"), {
            "night": night, "since": since, "previous_night": previous_night, "dry_run": dry_run,
            "rules": json.dumps(asdict(rules)), "figures": json.dumps(figures), "fired": json.dumps(fired),
            "decision": "stopped" if fired else "passed", "context": context,
            "user_ids": user_ids, "movie_ids": movie_ids, "keep_snapshots": retention,
        }).scalar_one()
    check = DataCheck(check_id, night, figures, fired)
    for rule in fired if alert and not dry_run else []:
        check.alert_ids.append(record_alert(
            engine, kind=DATA_GATE, metric=rule["metric"], value=float(rule["value"]),
            threshold=float(rule["threshold"]), context=context,
            message=f"data gate: the night {night:%Y-%m-%d %H:%M}Z stopped before training: {rule['rule']}:"
                    f" {rule['message']}"))
    if check.alert_ids:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE data_checks SET alert_ids = :ids WHERE check_id = :id"),
                         {"ids": check.alert_ids, "id": check_id})
    log.info("data check %s: %s", check_id, check.message())
    return check


def stopped_check(engine: Engine, night: datetime, context: str | None = None, any_context: bool = False):
    """The newest data check that stopped the night (in the run `context`, or any run),
    as a DataCheck; None when none did."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT check_id, night, figures, fired, alert_ids FROM data_checks WHERE night = :night"
            " AND decision = 'stopped' AND (:any OR context IS NOT DISTINCT FROM :context)"
            " ORDER BY check_id DESC LIMIT 1"), {"night": night, "context": context, "any": any_context}).mappings().first()
    if row is None:
        return None
    return DataCheck(int(row["check_id"]), row["night"], row["figures"], row["fired"], [int(a) for a in row["alert_ids"]])


def stopped_check_alerts(engine: Engine, night: datetime, context: str | None) -> list[int]:
    """Alert ids of the data check that stopped this night in the run `context` (none: [])."""
    check = stopped_check(engine, night, context)
    return check.alert_ids if check is not None else []
