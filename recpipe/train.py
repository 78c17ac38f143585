"""Train one registered model for a night, in this process or in a fresh one.

A fresh process is what the accelerator worker uses: TensorFlow keeps GPU memory for
the life of a process and CUDA cannot be re-initialised in a forked Celery worker.
The parent writes a typed request (JSON: the night plan, the model, the input ids),
runs `python -m recpipe.train REQUEST RESPONSE`, and reads the typed response back;
the child's stdout and stderr are its log, relayed line by line at INFO, never parsed. The database URL travels in
the child's environment, never in the request file.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from recpipe.config import Settings
from recpipe.plan import FULL, REFIT, WARM_START, NightInputs, NightPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    plan: NightPlan
    model: str
    inputs: NightInputs = NightInputs()
    phase: str = "gated"  # or "refit": trained on every rating before the night
    gated_run_id: int | None = None  # a refit's gated run

    def to_json(self) -> str:
        return json.dumps({"plan": self.plan.to_dict(), "model": self.model, "inputs": self.inputs.to_dict(),
                           "phase": self.phase, "gated_run_id": self.gated_run_id})

    @classmethod
    def from_json(cls, text: str) -> "TrainRequest":
        data = json.loads(text)
        return cls(NightPlan.from_dict(data["plan"]), data["model"], NightInputs.from_dict(data["inputs"]),
                   data.get("phase", "gated"), data.get("gated_run_id"))


@dataclass(frozen=True)
class TrainResponse:
    run_id: int
    model: str
    night: str
    artifact_id: int
    seconds: float
    training: dict = field(default_factory=dict)  # scalar facts of the fit (curves stay in the registry)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResponse":
        return cls(**data)


def train(engine: Engine, settings: Settings, request: TrainRequest, verbose: int | None = None) -> TrainResponse:
    """Fit request.model on the data before its phase's end (the training cutoff for the
    gated run, the night for a refit); register the run."""
    from recpipe import artifacts, registry, runs
    from recpipe.recommenders.base import Store

    plan, name = request.plan, request.model
    spec = registry.spec(name)
    recommender = registry.recommender(name)
    config = plan.model_config(name)
    started = time.perf_counter()
    train_until = plan.train_until(request.phase)
    store = Store(engine, settings)
    parent = runs.get(engine, request.gated_run_id) if request.phase == REFIT else None
    if parent is not None and hasattr(recommender, "refit_config"):
        config = recommender.refit_config(config, parent.data_stats)  # the gated choice, never chosen again
    data = recommender.prepare(store, plan, request.inputs, config, train_until)
    initial, refit = None, None
    if parent is not None:
        initial, refit = _warm_start(store, plan, request, recommender, data, config, parent)
        if initial is not None:
            config = {**config, "epochs": plan.warm_start_epochs}
    folder = artifacts.new_dir(settings, name, plan.night)
    try:
        fitted = recommender.fit(data, config, folder, verbose, **({"initial_weights": initial} if initial else {}))
        artifact = artifacts.register(engine, settings, name, plan.night, folder, fitted.row_counts,
                                      fitted.data_stats)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a failed fit leaves no unregistered files
        raise
    if refit:
        fitted.training["refit_mode"] = refit["mode"]
    run_id = runs.save_trained(
        engine, settings, model=name, night=plan.night, config=config, data_stats=fitted.data_stats,
        metrics={"training": fitted.training}, artifact=artifact, is_baseline=spec.baseline,
        dry_run=plan.dry_run, plan={"night": plan.night.isoformat(), "training_cutoff":
                                    plan.training_cutoff.isoformat(), "train_until": train_until.isoformat(),
                                    "inputs": request.inputs.to_dict(), **({"refit": refit} if refit else {})},
        phase=request.phase, gated_run_id=request.gated_run_id,
    )
    seconds = round(time.perf_counter() - started, 2)
    log.info("trained %s (%s) for %s: run %s in %.1fs", name, request.phase, plan.night, run_id, seconds)
    return TrainResponse(run_id, name, plan.night.isoformat(), artifact.artifact_id, seconds,
                         {k: v for k, v in fitted.training.items() if k != "curves"})


def _warm_start(store, plan: NightPlan, request: TrainRequest, recommender, data, config: dict, parent
                ) -> tuple[dict | None, dict]:
    """(initial weights or None, the refit's record): with plan.refit "warm_start", the gated
    run's verified weights grown to tonight's vocabularies; a model without weights to
    continue from (the closed-form baselines), or whose gated run cannot seed it, refits in
    full, and the record says why."""
    from recpipe.recommenders.base import WarmStartUnavailable

    record = {"mode": FULL, "requested": plan.refit, "gated_run_id": request.gated_run_id}
    if plan.refit != WARM_START:
        return None, record
    if not hasattr(recommender, "warm_start_weights"):
        return None, {**record, "why_full": f"{request.model} has no weights to continue from"}
    try:
        with parent.open_artifact(store.settings) as bundle:  # verified (sha256) before anything is read
            weights, facts = recommender.warm_start_weights(bundle, parent, store, data, config)
    except WarmStartUnavailable as exc:
        log.warning("%s refit: no warm start from run %s (%s): refitting in full", request.model, parent.run_id, exc)
        return None, {**record, "why_full": str(exc)}
    return weights, {**record, "mode": WARM_START, "from_run_id": parent.run_id,
                     "from_artifact_id": parent.artifact_id, "epochs": plan.warm_start_epochs, **facts}


def train_in_fresh_process(settings: Settings, database_url: str, request: TrainRequest) -> TrainResponse:
    """`train` in a new Python process (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="recpipe-train-") as tmp:
        request_path, response_path = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request_path.write_text(request.to_json())
        command = [sys.executable, "-m", "recpipe.train", str(request_path), str(response_path)]
        log.info("training %s in a fresh process", request.model)
        # TensorFlow's C++ INFO/WARNING banner off; the child's lines are relayed through
        # this logger at INFO (a task log would file raw stderr as errors).
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **settings.child_env(database_url)}
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as child:
            for line in child.stdout:
                tail.append(line.rstrip())
                log.info("[%s] %s", request.model, line.rstrip())
        if child.returncode != 0 or not response_path.is_file():
            log.error("training %s failed in its process (exit code %s); its last lines:\n%s",
                      request.model, child.returncode, "\n".join(tail))
            raise RuntimeError(f"training {request.model} failed in its process (exit code {child.returncode});"
                               " its log is above")
        return TrainResponse.from_dict(json.loads(response_path.read_text()))


def main(argv: list[str] | None = None) -> int:
    """The fresh process: read the request, train, write the response."""
    from recpipe.db import migrated_engine

    request_path, response_path = (argv if argv is not None else sys.argv[1:])[:2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = TrainRequest.from_json(Path(request_path).read_text())
    settings = Settings.from_env()
    response = train(migrated_engine(settings), settings, request)
    Path(response_path).write_text(json.dumps(response.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
