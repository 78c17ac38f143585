"""The whole nightly on generated data at growing sizes, one stage at a time.

    python bench/scale.py [--sizes 1M,5M,25M] [--epochs 1] [--deadline 07:15] [--out scale]
    python bench/scale.py --sizes 25M --models popularity,autoint --stop-after train_autoint  # one model

Per size: recpipe.generate writes the generic CSV format (timed, not a pipeline stage)
into a scratch folder; a fresh PostgreSQL database gets recpipe's ingest and, in the
same run, a raw `COPY` of the same CSV rows into a bare unindexed table (the ingest /
COPY ratio); then the night after the newest rating runs through the same stage
functions `recpipe run` and the DAGs use (recpipe.pipeline): check_data, rebuild
encodings, rebuild sessions, train every registered model (one stage per model, the
stated epochs), evaluate, gate, publish. The night ships the gated runs (ship=gated):
a refit is the same training again on 60 more days, so its cost per million ratings
is the training stages'.

Each stage runs in its own child process (this script with --child); its peak RSS is
the ru_maxrss of the rusage os.wait4 returns for that child (the RUSAGE_CHILDREN
figure of that one process and what it reaped; the PostgreSQL server's own processes
are not in it). rows/s is the size's ratings over the stage's seconds, so every
stage's figures compare with the same denominator. The JSON is rewritten after every
stage, so an interrupted run still leaves the figures of the stages that finished;
a stage that did not finish is marked (timed_out / failed / not_run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, load_average, machine, matmul_gflops, scratch_database  # noqa: E402

GOAL_GROWTH = 1.3  # s/Mrating at the largest size over 1M (issue 12)
GOAL_RSS_GIB = 8.0  # peak RSS at 25M
GOAL_INGEST_RATIO = 3.0  # ingest over raw COPY


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


# --------------------------------------------------------------------- the child side
def _settings(state: dict):
    from recpipe.config import Settings

    return Settings.from_env().with_(database_url=state["url"], home=Path(state["home"]),
                                     source_dir=Path(state["data"]), source_format="generic")


def _plan(state: dict):
    from recpipe.plan import NightPlan

    return NightPlan.from_dict(state["plan"])


def _raw_copy(state: dict) -> dict:
    """COPY the generated ratings.csv as-is into a bare table (no index, no constraint)."""
    import psycopg2
    import sqlalchemy as sa

    url = sa.engine.make_url(state["url"])
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                            dbname=url.database)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS raw_ratings")
            cur.execute("CREATE TABLE raw_ratings (user_id integer, item_id integer, rating smallint, ts bigint)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, open(Path(state["data"]) / "ratings.csv", "rb") as fh:
            cur.copy_expert("COPY raw_ratings FROM STDIN WITH (FORMAT csv, HEADER true)", fh, size=1 << 20)
            cur.execute("SELECT count(*) FROM raw_ratings")
            rows = cur.fetchone()[0]
        conn.commit()
        seconds = time.perf_counter() - started
        with conn.cursor() as cur:
            cur.execute("DROP TABLE raw_ratings")
        conn.commit()
    finally:
        conn.close()
    return {"copied": rows, "copy_seconds": seconds}


def _ingest(state: dict) -> dict:
    import sqlalchemy as sa

    from recpipe import pipeline
    from recpipe.db import migrated_engine

    settings = _settings(state)
    report = pipeline.ingest_interval(settings, None, None)
    with migrated_engine(settings).connect() as conn:
        newest = conn.execute(sa.text("SELECT max(rated_at) FROM ratings")).scalar().astimezone(timezone.utc)
    night = datetime(newest.year, newest.month, newest.day, tzinfo=timezone.utc) + timedelta(days=1)
    report.pop("files", None)
    return {**report, "night": night.isoformat()}


def _ingest_profiled(state: dict) -> dict:
    """The same ingest under cProfile, into a second fresh database (not the timed one)."""
    import cProfile
    import io
    import pstats

    import sqlalchemy as sa

    server = sa.engine.make_url(state["url"])
    name = server.database + "_prof"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        prof_state = {**state, "url": server.set(database=name).render_as_string(hide_password=False)}
        profiler = cProfile.Profile()
        profiler.enable()
        result = _ingest(prof_state)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        return {"seconds_profiled": result["seconds"], "profile_cumulative_top35": out.getvalue()}
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _generate(state: dict) -> dict:
    from recpipe.generate import Spec, write

    return write(state["data"], Spec(ratings=state["ratings"], seed=state["seed"]), "generic")


def run_child(stage: str, state_file: Path, out_file: Path) -> int:
    from recpipe import pipeline, registry

    state = json.loads(state_file.read_text())
    started = time.perf_counter()
    if stage == "probe":
        result = matmul_gflops()
    elif stage == "generate":
        result = _generate(state)
    elif stage == "raw_copy":
        result = _raw_copy(state)
    elif stage == "ingest":
        result = _ingest(state)
    elif stage == "ingest_profiled":
        result = _ingest_profiled(state)
    else:
        settings, plan = _settings(state), _plan(state)
        outputs = state["outputs"]
        if stage == "check_data":
            result = pipeline.check_data(settings, plan)
        elif stage == "rebuild_encodings":
            result = pipeline.rebuild_encodings(settings, plan)
        elif stage == "rebuild_sessions":
            result = pipeline.rebuild_sessions(settings, plan)
        elif stage.startswith("train_"):
            model = stage[len("train_"):]
            needs = [outputs[f"train_{m}"] for m in registry.spec(model).needs]
            inputs = pipeline.night_inputs(outputs["rebuild_encodings"], outputs["rebuild_sessions"], needs or None)
            result = pipeline.train_model(settings, plan, model, inputs)
        elif stage == "evaluate":
            result = pipeline.evaluate(settings, plan, state["run_ids"])
        elif stage == "gate":
            result = pipeline.gate(settings, plan, state["run_ids"])
        elif stage == "publish":
            result = pipeline.publish(settings, plan, state["run_ids"], [])
        else:
            raise SystemExit(f"unknown stage {stage}")
    result = {"seconds_inside": time.perf_counter() - started, "result": result}
    out_file.write_text(json.dumps(result, default=str))
    return 0


# -------------------------------------------------------------------- the parent side
class Bench:
    def __init__(self, args):
        self.args = args
        self.deadline = args.deadline_at
        self.path = RESULTS / f"{args.out}.json"
        self.payload = {
            "benchmark": args.out, "started_at": datetime.now(timezone.utc).isoformat(), "machine": machine(),
            "command": " ".join(sys.argv), "epochs": args.epochs, "ship": "gated (no refit stages)",
            "train_sample": None, "model_overrides": args.model_overrides, "stop_after": args.stop_after,
            "models": args.models,
            "gate": "opened (no floors, no baseline to beat): every model is published" if args.open_gate
                    else "as configured (recpipe/gate.yaml): only promoted models are published",
            "rss_method": "os.wait4 rusage ru_maxrss of each stage's child process (RUSAGE_CHILDREN of that"
                          " one child and what it reaped); PostgreSQL server processes excluded; Linux keeps"
                          " ru_maxrss across fork+exec, so parent_rss_mib is every stage's floor",
            "rows_per_s_means": "the size's generated ratings / the stage's seconds",
            "goals": {"max_growth_s_per_mrating": GOAL_GROWTH, "peak_rss_gib_at_25m": GOAL_RSS_GIB,
                      "ingest_over_raw_copy": GOAL_INGEST_RATIO},
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "probe_before": None, "load_before": load_average(), "probe_after": None, "load_after": None,
            "sizes": {}, "growth_vs_1m": {}, "finished": False,
        }

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.payload["written_at"] = datetime.now(timezone.utc).isoformat()
        self.payload["growth_vs_1m"] = self.growth()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.payload, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def growth(self) -> dict:
        sizes = self.payload["sizes"]
        base = sizes.get("1M")
        if not base:
            return {}
        out = {}
        for label, entry in sizes.items():
            if label == "1M":
                continue
            for stage, fig in entry["stages"].items():
                ref = base["stages"].get(stage)
                if fig.get("status") == "done" and ref and ref.get("status") == "done" and ref["s_per_mrating"]:
                    g = fig["s_per_mrating"] / ref["s_per_mrating"]
                    out.setdefault(stage, {})[label] = {"growth": round(g, 3), "within_goal": g <= GOAL_GROWTH}
        return out

    def time_left(self) -> float | None:
        if self.deadline is None:
            return None
        return (self.deadline - datetime.now(timezone.utc)).total_seconds()

    def stage(self, entry: dict, name: str, state: dict, workdir: Path, pipeline_stage: bool = True) -> dict | None:
        """Run one stage in a child; record its figures; the child's result, or None."""
        n = state["ratings"]
        fig = {"status": "not_run", "pipeline_stage": pipeline_stage}
        entry["stages"][name] = fig
        left = self.time_left()
        if left is not None and left <= 5:
            fig["status"] = "not_run"
            fig["why"] = "deadline reached before it started"
            self.save()
            return None
        state_file, out_file = workdir / "state.json", workdir / f"{name}.out.json"
        state_file.write_text(json.dumps(state, default=str))
        out_file.unlink(missing_ok=True)
        fig["load_1m_at_start"] = os.getloadavg()[0]
        fig["parent_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        fig["status"] = "running"
        self.save()
        cmd = [sys.executable, __file__, "--child", name, "--state", str(state_file), "--child-out", str(out_file)]
        print(f"[{size_label(n)}] {name} ...", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            left = self.time_left()
            if left is not None and left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)  # the poll bounds a stage's seconds from above: keep it small beside 1M stages of ~2 s
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        fig.update({"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)})
        if timed_out:
            fig.update({"status": "timed_out", "why": f"killed at the deadline {self.deadline:%H:%M} UTC"})
        elif proc.returncode != 0 or not out_file.exists():
            fig.update({"status": "failed", "exit": proc.returncode})
        else:
            child = json.loads(out_file.read_text())
            fig.update({"status": "done", "s_per_mrating": round(seconds / (n / 1e6), 3),
                        "rows_per_s": round(n / seconds, 1)})
            self.save()
            print(f"[{size_label(n)}] {name}: {seconds:.1f} s, {seconds / (n / 1e6):.1f} s/Mrating,"
                  f" {n / seconds:,.0f} rows/s, peak RSS {fig['peak_rss_mib']:,.0f} MiB", flush=True)
            return child["result"]
        self.save()
        print(f"[{size_label(n)}] {name}: {fig['status']} after {seconds:.1f} s", flush=True)
        return None

    def gate_overrides(self) -> dict | None:
        """--open-gate: no floors, no baseline to beat, one test user is enough, so that
        every model is published (publication at its most expensive, whatever 1 epoch learnt)."""
        if not self.args.open_gate:
            return None
        from recpipe.gate import GateRules

        floors = GateRules.load().floors
        return {"must_beat_baseline": False, "min_test_users": 1,
                "floors": {m: {k: 0.0 for k in f} for m, f in floors.items()}}

    def run_size(self, n: int) -> None:
        from recpipe import registry
        from recpipe.config import PipelineParams, Settings
        from recpipe.pipeline import make_plan

        label = size_label(n)
        entry = {"ratings": n, "stages": {}, "started_at": datetime.now(timezone.utc).isoformat()}
        self.payload["sizes"][label] = entry
        workdir = Path(tempfile.mkdtemp(prefix=f"recpipe_scale_{label}_", dir=self.args.workdir))
        data = workdir / "data"
        state = {"ratings": n, "seed": self.args.seed, "data": str(data), "home": str(workdir / "home"),
                 "url": None, "outputs": {}}
        try:
            gen = self.stage(entry, "generate", state, workdir, pipeline_stage=False)
            if gen is None:
                return
            entry["generated"] = {k: gen[k] for k in ("ratings", "users", "items", "bytes", "seconds")}
            with scratch_database() as url:
                state["url"] = url
                ingested = self.stage(entry, "ingest", state, workdir)
                raw = self.stage(entry, "raw_copy", state, workdir, pipeline_stage=False)
                if ingested is None:
                    return
                entry["ingest_report"] = {k: ingested.get(k) for k in
                                          ("lines_read", "inserted", "duplicate", "rejected", "reasons", "summary")}
                if raw is not None:
                    ratio = entry["stages"]["ingest"]["seconds"] / entry["stages"]["raw_copy"]["seconds"]
                    entry["ingest_over_raw_copy"] = {"ratio": round(ratio, 2), "within_goal": ratio <= GOAL_INGEST_RATIO,
                                                     "raw_copy_rows": raw["copied"]}
                    print(f"[{label}] ingest / raw COPY = {ratio:.2f}x (goal <= {GOAL_INGEST_RATIO}x)", flush=True)
                    if self.args.profile_ingest and ratio > GOAL_INGEST_RATIO and label in self.args.profile_ingest:
                        prof = self.stage(entry, "ingest_profiled", state, workdir, pipeline_stage=False)
                        if prof:
                            entry["ingest_profile"] = prof["profile_cumulative_top35"]
                night = datetime.fromisoformat(ingested["night"])
                settings = Settings.from_env().with_(database_url=url)
                plan = make_plan(settings, night, PipelineParams(ship="gated"), epochs=self.args.epochs,
                                 gate_overrides=self.gate_overrides(), model_overrides=self.args.model_overrides,
                                 models=tuple(self.args.models.split(",")) if self.args.models else None)
                state["plan"] = plan.to_dict()
                entry["night"] = night.isoformat()
                order = ["check_data", "rebuild_encodings", "rebuild_sessions"]
                order += [f"train_{m}" for m in registry.training_order(plan.models)]
                if self.args.stop_after in order:  # a partial night: the stages after it are not run
                    order = order[:order.index(self.args.stop_after) + 1]
                for name in order:
                    if name.startswith("train_"):
                        model = name[len("train_"):]
                        if any(state["outputs"].get(f"train_{m}") is None for m in registry.spec(model).needs):
                            entry["stages"][name] = {"status": "not_run", "why": "a model it needs did not train"}
                            continue
                    result = self.stage(entry, name, state, workdir)
                    state["outputs"][name] = result
                    if result is None and name in ("rebuild_encodings", "rebuild_sessions"):
                        return
                    if name.startswith("train_") and result is not None:
                        entry["stages"][name]["training"] = {
                            k: v for k, v in (result.get("training") or {}).items() if not isinstance(v, (dict, list))}
                state["run_ids"] = [state["outputs"][f"train_{m}"]["run_id"] for m in registry.training_order(plan.models)
                                    if state["outputs"].get(f"train_{m}")]
                if not state["run_ids"] or self.args.stop_after in order:
                    return
                evaluated = self.stage(entry, "evaluate", state, workdir)
                if evaluated is None:
                    return
                entry["evaluation"] = evaluated["metrics"]
                decided = self.stage(entry, "gate", state, workdir)
                if decided is None:
                    return
                entry["gate"] = {"promoted": decided["promoted"], "learned_promoted": decided["learned_promoted"]}
                published = self.stage(entry, "publish", state, workdir)
                if published is not None:
                    entry["published"] = published.get("published")
        finally:
            entry["finished_at"] = datetime.now(timezone.utc).isoformat()
            timed = [f["seconds"] for s, f in entry["stages"].items() if f.get("pipeline_stage") and "seconds" in f]
            entry["night_wall_s"] = round(sum(timed), 1)
            entry["complete"] = all(f.get("status") == "done" for f in entry["stages"].values())
            rss = [f["peak_rss_mib"] for f in entry["stages"].values() if "peak_rss_mib" in f]
            entry["peak_rss_mib"] = max(rss, default=None)
            self.save()
            if not self.args.keep_data:
                shutil.rmtree(workdir, ignore_errors=True)

    def probe(self) -> dict:
        """The matmul probe in a child: Keras stays out of this process, whose RSS every
        stage's child would otherwise start from (Linux keeps ru_maxrss across fork+exec)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "probe.json"
            state = Path(tmp) / "state.json"
            state.write_text("{}")
            subprocess.run([sys.executable, __file__, "--child", "probe", "--state", str(state), "--child-out",
                            str(out)], check=True)
            return json.loads(out.read_text())["result"]

    def run(self) -> None:
        self.payload["probe_before"] = self.probe()
        self.payload["parent_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self.save()
        for n in self.args.sizes:
            self.run_size(n)
        self.payload["probe_after"] = self.probe()
        self.payload["load_after"] = load_average()
        self.payload["finished"] = True
        self.save()
        self.print_table()
        print(f"wrote {self.path}")

    def print_table(self) -> None:
        sizes = self.payload["sizes"]
        print(f"\nepochs {self.payload['epochs']}; {self.payload['rss_method']}")
        print(f"{'stage':<20}" + "".join(f"{l:>40}" for l in sizes))
        print(f"{'':<20}" + "".join(f"{'s  s/Mr  rows/s  RSS MiB':>40}" for _ in sizes))
        stages = list(dict.fromkeys(s for e in sizes.values() for s in e["stages"]))
        for stage in stages:
            cells = []
            for entry in sizes.values():
                f = entry["stages"].get(stage, {})
                if f.get("status") == "done":
                    cells.append(f"{f['seconds']:.1f} {f['s_per_mrating']:.1f} {f['rows_per_s']:,.0f}"
                                 f" {f['peak_rss_mib']:,.0f}")
                else:
                    cells.append(f.get("status", "-"))
            print(f"{stage:<20}" + "".join(f"{c:>40}" for c in cells))
        for stage, by in self.payload["growth_vs_1m"].items():
            print(f"growth {stage}: " + ", ".join(f"{l} {g['growth']}x" for l, g in by.items()))


def merge(into: str, others: list[str]) -> None:
    """Copy the sizes of other result files (runs of other sizes, e.g. started side by side)
    into bench/results/<into>.json, keeping each run's probe and load, and recompute the growth."""
    path = RESULTS / f"{into}.json"
    payload = json.loads(path.read_text())
    runs = payload.setdefault("runs", {into: {k: payload.get(k) for k in
                                              ("started_at", "probe_before", "probe_after", "load_before",
                                               "load_after", "finished", "command")}})
    for name in others:
        other = json.loads((RESULTS / f"{name}.json").read_text())
        runs[name] = {k: other.get(k) for k in ("started_at", "probe_before", "probe_after", "load_before",
                                                "load_after", "finished", "command")}
        for label, entry in other["sizes"].items():
            payload["sizes"][label] = {**entry, "from_run": name}
    payload["merged_note"] = ("sizes come from separate runs (see runs, each size's from_run) that may have run at"
                              " the same time on the shared cores: a growth ratio carries the load difference")
    order = sorted(payload["sizes"], key=lambda label: payload["sizes"][label]["ratings"])
    payload["sizes"] = {label: payload["sizes"][label] for label in order}
    bench = Bench.__new__(Bench)
    bench.payload, bench.path = payload, path
    bench.save()
    bench.print_table()
    print(f"merged {', '.join(others)} into {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,5M,25M", help="ratings per size, comma-separated (1M, 5M, 25M)")
    parser.add_argument("--epochs", type=int, default=1, help="the learned models' epochs (stated in the JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", help="HH:MM UTC: no stage starts after it, a running one is killed (unfinished)")
    parser.add_argument("--out", default="scale", help="bench/results/<out>.json")
    parser.add_argument("--workdir", default=None, help="scratch folder for the generated data (default: TMPDIR)")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--profile-ingest", default="5M",
                        help="sizes whose ingest is profiled (cProfile, a second database) when over the ratio goal")
    parser.add_argument("--gate", dest="open_gate", choices=["open", "configured"], default="open",
                        help="open: every model is published (default); configured: recpipe/gate.yaml decides")
    parser.add_argument("--model-overrides", type=json.loads, default={},
                        help='JSON {model: {key: value}} for every size, e.g. \'{"autoint": {"catalogue_limit": 500}}\''
                             ' (stated in the JSON)')
    parser.add_argument("--models", help="comma-separated registered models to train (default: all; stated in the JSON)")
    parser.add_argument("--stop-after", help="a pipeline stage (e.g. train_autoint): run the night up to it only"
                                             " (stated in the JSON)")
    parser.add_argument("--merge", help="NAME,OTHER[,...]: merge results OTHER into NAME (no run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            code = run_child(args.child, args.state, args.child_out)
        except Exception:
            traceback.print_exc()
            code = 1
        sys.exit(code)
    if args.merge:
        into, *others = args.merge.split(",")
        merge(into, others)
        return
    args.open_gate = args.open_gate == "open"
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.profile_ingest = [s.strip().upper() for s in args.profile_ingest.split(",")] if args.profile_ingest else []
    args.deadline_at = None
    if args.deadline:
        hh, mm = (int(x) for x in args.deadline.split(":"))
        now = datetime.now(timezone.utc)
        args.deadline_at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if args.deadline_at <= now:
            args.deadline_at += timedelta(days=1)
    Bench(args).run()


if __name__ == "__main__":
    main()
