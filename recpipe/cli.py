"""`recpipe` command line: every stage of the pipeline, callable by hand."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone

from recpipe.config import Settings
from recpipe.source import SourceError

EXIT_USAGE = 2


def parse_time(text: str) -> datetime:
    """ISO date or date-time; a time without zone is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from exc
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def parse_duration(text: str):
    """'30min', '2h', '90s', '1d' -> timedelta."""
    from datetime import timedelta

    units = {"s": "seconds", "sec": "seconds", "min": "minutes", "m": "minutes", "h": "hours", "d": "days"}
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if not number or unit not in units:
        raise argparse.ArgumentTypeError(f"duration needs a unit (s, min, h, d): {text!r}")
    return timedelta(**{units[unit]: float(number)})


def _print(result, as_json: bool, text: str | None = None) -> None:
    if as_json:
        # The real stdout: main() sends everything else (Keras' epoch lines) to stderr.
        print(json.dumps(result, indent=2, default=str), file=sys.__stdout__, flush=True)
    elif text is not None:
        print(text)


def cmd_db(args, settings: Settings) -> int:
    from recpipe import db

    if args.action == "upgrade":
        engine = db.make_engine(settings)
        applied = db.upgrade(engine)
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'database already up to date'}")
    elif args.action == "url":
        print(db.safe_url(db.resolve_database_url(settings)))  # never the password
    elif args.action == "stop":
        print("embedded PostgreSQL stopped" if db.stop_embedded(settings.home) else "embedded PostgreSQL not running")
    return 0


def cmd_data(args, settings: Settings) -> int:
    from recpipe.formats import download_dataset

    dest = args.dest or settings.home / "data"
    folder = download_dataset(args.dataset, dest)
    print(f"{args.dataset} verified at {folder}; use it with RECPIPE_SOURCE_DIR={folder}")
    return 0


def cmd_ingest(args, settings: Settings) -> int:
    from recpipe import pipeline

    if not args.all and args.start is None and args.end is None:
        raise SystemExit("ingest: give --start/--end or --all")
    if args.format:
        settings = settings.with_(source_format=args.format)
    report = pipeline.ingest_interval(settings, None if args.all else args.start, None if args.all else args.end)
    _print(report, args.json, report["summary"])
    return 0


def _engine(settings: Settings):
    from recpipe.db import migrated_engine

    return migrated_engine(settings)


def _plan(args, settings: Settings, **choices):
    from recpipe import pipeline

    return pipeline.make_plan(settings, args.as_of, **choices)


def cmd_build(args, settings: Settings) -> int:
    from recpipe import pipeline

    if args.what == "encodings":
        result = pipeline.rebuild_encodings(settings, _plan(args, settings))
        _print(result, args.json, f"encodings artifact {result['encodings_id']} for the night"
               f" {args.as_of:%Y-%m-%d %H:%M}Z (fitted before {result['fitted_before']}):"
               f" field_dims {result['field_dims']} from {result['rows']} ratings -> {result['path']}")
        return 0
    from recpipe.sessions import SessionParams, build_sessions

    params = SessionParams(mode=args.mode, session_gap=args.gap, bucket=args.bucket,
                           test_days=args.test_days, val_days=args.val_days)
    if args.purpose == "production":
        result = pipeline.rebuild_sessions(settings, _plan(args, settings, session_params=params.to_dict()))
        result["build_id"] = result["sessions_build_id"]
    else:
        result = build_sessions(_engine(settings), args.as_of, params, args.purpose)
    lines = [f"session build {result['build_id']} ({args.purpose}, {args.mode}) as of {args.as_of:%Y-%m-%d}:"]
    for split, st in result["stats"].items():
        lines.append(f"  {split:<10} events {st['events']:>9,}  sessions {st['sessions']:>7,}  items {st['items']:>6,}")
    _print(result, args.json, "\n".join(lines))
    return 0


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def default_as_of(settings: Settings) -> datetime:
    """Midnight (UTC) after the newest stored rating: "tonight" for a replayed dataset."""
    import sqlalchemy as sa

    with _engine(settings).connect() as conn:
        newest = conn.execute(sa.text("SELECT max(rated_at) FROM ratings")).scalar()
    if newest is None:
        raise SystemExit("no ratings stored: run `recpipe ingest` first")
    newest = newest.astimezone(timezone.utc)
    return datetime(newest.year, newest.month, newest.day, tzinfo=timezone.utc) + __import__("datetime").timedelta(days=1)


def cmd_train(args, settings: Settings) -> int:
    """Train one model for a night; without input ids, the night's rebuilds run first."""
    from recpipe import pipeline, registry
    from recpipe.plan import NightInputs

    plan = _plan(args, settings, models=_models_with_baseline([args.model]), epochs=args.epochs,
                 model_overrides={args.model: args.overrides or {}})
    encodings, sessions = args.encodings, args.sessions
    if encodings is None:
        encodings = pipeline.rebuild_encodings(settings, plan)["encodings_id"]
    if sessions is None:
        sessions = pipeline.rebuild_sessions(settings, plan)["sessions_build_id"]
    inputs = NightInputs(encodings, sessions)
    needs = registry.spec(args.model).needs
    if needs:  # built from the night's stored runs of the models it needs
        from recpipe import runs

        stored = {r.model: r.run_id for r in runs.of_night(_engine(settings), plan.night)}
        missing = [m for m in needs if m not in stored]
        if missing:
            raise SystemExit(f"{args.model} needs the night's {', '.join(missing)} run(s): train them first")
        inputs = inputs.with_components({m: stored[m] for m in needs})
    result = pipeline.train_model(settings, plan, args.model, inputs)
    _print(result, args.json, f"{args.model} run {result['run_id']} for the night {args.as_of:%Y-%m-%d}"
           f" (encodings {encodings}, sessions {sessions}): {result['training']}")
    return 0


def _models_with_baseline(models: list[str]) -> tuple[str, ...]:
    """The baselines, `models`, and the models they need (e.g. twostage's components)."""
    from recpipe import registry

    return tuple(dict.fromkeys([*registry.baseline_names(), *registry.training_order(registry.with_needs(models))]))


def _metrics_table(rows: list[tuple[str, dict]], keys: list[str]) -> str:
    lines = [f"{'model':<12}" + "".join(f"{k:>16}" for k in keys)]
    for name, metrics in rows:
        cells = []
        for k in keys:
            v = metrics.get(k)
            cells.append(f"{v:>16.4f}" if isinstance(v, float) else f"{str(v if v is not None else '-'):>16}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)


def cmd_evaluate(args, settings: Settings) -> int:
    from recpipe import registry

    models = list(registry.names()) if args.model == "all" else [args.model]
    if args.protocol == "production":
        return _evaluate_production(args, settings, models)
    if args.protocol == "loo":
        return _evaluate_loo(args, settings)
    from recpipe.db import read_movies, read_ratings, read_users

    engine = _engine(settings)
    ratings = read_ratings(engine).sort_values("line_no", kind="stable").reset_index(drop=True)
    out_dir = settings.artifacts_dir / "eval" / f"{args.protocol}_{datetime.now():%Y%m%dT%H%M%S}"
    results = {}
    if args.protocol == "seed000":
        from recpipe.evaluation.seed000 import run_seed000
        from recpipe.models.autoint import DEFAULT_CONFIG, SEED000_CONFIG

        if "autoint" not in models:
            raise SystemExit("the seed000 protocol evaluates autoint")
        config = SEED000_CONFIG if args.config == "seed" else DEFAULT_CONFIG
        if args.epochs:
            config = config.with_(epochs=args.epochs)
        results["autoint"] = run_seed000(ratings, read_movies(engine), read_users(engine), config,
                                         out_dir=out_dir, verbose=0)
    else:
        from recpipe.evaluation.seed002 import run_seed002
        from recpipe.models.gru4rec import DEFAULT_CONFIG, SEED002_CONFIG

        if "gru4rec" not in models:
            raise SystemExit("the seed002 protocol evaluates gru4rec (popularity is reported beside it)")
        config = SEED002_CONFIG if args.config == "seed" else DEFAULT_CONFIG
        if args.epochs:
            config = type(config).from_dict({**config.to_dict(), "epochs": args.epochs})
        results["gru4rec"] = run_seed002(ratings, config, out_dir=out_dir, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    _write_out(args.out, {"protocol": args.protocol, "config": args.config, **results})
    _print(results, args.json, json.dumps(results, indent=2, default=str) + f"\nstored in {out_dir}")
    return 0


def _evaluate_loo(args, settings: Settings) -> int:
    """RecBole's ML-1M sequential protocol, read straight from the source's ratings.dat
    (it needs no database: the split is the whole file's)."""
    from recpipe.evaluation import loo
    from recpipe.source import check_source_dir

    folder = check_source_dir(settings.source_dir)
    out = args.out or settings.artifacts_dir / "eval" / f"loo_{datetime.now():%Y%m%dT%H%M%S}" / "metrics.json"
    argv = ["--data", str(folder), "--out", str(out)]
    if args.model != "all":
        if args.model not in loo.MODELS:
            raise SystemExit(f"the loo protocol evaluates {', '.join(loo.MODELS)}, not {args.model}")
        argv += ["--models", args.model]
    return loo.main(argv)


def _evaluate_production(args, settings: Settings, models: list[str]) -> int:
    """The production protocol as a night: T = cutoff + window, eval window = window."""
    from recpipe import pipeline, registry
    from recpipe.evaluation.production import DEFAULT_CUTOFF, DEFAULT_WINDOW

    cutoff = args.cutoff or DEFAULT_CUTOFF
    window = args.window or DEFAULT_WINDOW
    overrides = {}
    if args.overrides:
        if len(models) != 1:
            raise SystemExit("recpipe evaluate: --overrides needs one --model")
        overrides = {models[0]: args.overrides}
    plan = pipeline.make_plan(settings, cutoff + window, eval_window=window, models=_models_with_baseline(models),
                              epochs=args.epochs, dry_run=True, model_overrides=overrides)
    inputs = pipeline.night_inputs(pipeline.rebuild_encodings(settings, plan), pipeline.rebuild_sessions(settings, plan))
    trained: dict[str, int] = {}
    for m in registry.training_order(plan.models):  # a model after the models it needs
        needs = {c: trained[c] for c in registry.spec(m).needs}
        trained[m] = pipeline.train_model(settings, plan, m, inputs.with_components(needs))["run_id"]
    evaluated = pipeline.evaluate(settings, plan, list(trained.values()))
    rows = [(model, evaluated["metrics"][str(run_id)]) for model, run_id in trained.items()]
    keys = ["users", "recall_at_10", "ndcg_at_10", "hit_rate_at_10", "coverage_at_10", "auc", "log_loss"]
    text = (f"production protocol: train before {cutoff:%Y-%m-%d}, test positives of"
            f" [{cutoff:%Y-%m-%d}, {plan.night:%Y-%m-%d}) of users with history\n" + _metrics_table(rows, keys))
    payload = {"protocol": "production", "cutoff": cutoff, "until": plan.night, "runs": trained,
               "epochs": args.epochs, "fits": _fit_facts(settings, trained),
               "metrics": {model: metrics for model, metrics in rows}}
    _write_out(args.out, payload)
    _print(payload, args.json, text)
    return 0


def _fit_facts(settings: Settings, trained: dict[str, int]) -> dict:
    """What each run chose on its validation data and how long it took (from the registry)."""
    from recpipe import runs

    facts = {}
    for model, run_id in trained.items():
        run = runs.get(_engine(settings), run_id)
        training = (run.metrics or {}).get("training") or {}
        facts[model] = {"seconds": training.get("seconds"), "epochs_run": training.get("epochs_run"),
                        **{k: run.data_stats[k] for k in ("chosen", "n", "choice_log") if k in run.data_stats}}
    return facts


def _write_out(path, payload) -> None:
    if path is not None:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def cmd_publish(args, settings: Settings) -> int:
    from recpipe import pipeline, runs

    if args.rollback:
        from recpipe.publish import RollbackError, rollback

        try:
            done = rollback(_engine(settings), args.rollback)
        except RollbackError as exc:
            raise SystemExit(f"recpipe: {exc}") from exc
        _print(done, args.json, f"{done['model']}: live lists are run {done['to_run_id']} of {done['to_night'][:10]}"
                                f" again (run {done['from_run_id']} of {done['from_night'][:10]} marked rejected)")
        return 0
    if args.as_of is None:
        raise SystemExit("recpipe publish: --as-of NIGHT (or --rollback MODEL) is required")
    night_runs = runs.of_night(_engine(settings), args.as_of)
    wanted = [r.run_id for r in night_runs if not args.model or r.model in args.model or r.is_baseline]
    if not wanted:
        raise SystemExit(f"no runs for the night {args.as_of:%Y-%m-%d %H:%M}Z: run `recpipe run` first")
    plan = _plan(args, settings, models=tuple(dict.fromkeys(r.model for r in night_runs)), dry_run=args.dry_run)
    result = pipeline.publish(settings, plan, wanted)
    lines = [f"{p['model']:<12} run {p['run_id']}: {p['rows']} rows for {p['users']} users in {p['seconds']}s"
             f"{' (live)' if p['live'] else ' (stored; a newer night is live)'}" for p in result.get("published", [])]
    _print(result, args.json, "\n".join(lines) or json.dumps(result))
    return 0


def cmd_report(args, settings: Settings) -> int:
    from recpipe.report import latest_report, write_night_report

    engine = _engine(settings)
    path = None if args.write else latest_report(engine, settings, args.night)
    if path is None:
        path = write_night_report(engine, settings, args.night, out_dir=args.out).html_path
    _print({"report": str(path)}, args.json, f"night report for {args.night:%Y-%m-%d %H:%M}Z: {path}")
    return 0


def cmd_artifacts(args, settings: Settings) -> int:
    from recpipe import artifacts

    removed = artifacts.prune(_engine(settings), settings, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {len(removed)} artifact folder(s) no run uses"] + [f"  {p}" for p in removed]
    _print([str(p) for p in removed], args.json, "\n".join(lines))
    return 0


def cmd_runs(args, settings: Settings) -> int:
    from recpipe import runs

    listed = runs.listing(_engine(settings), args.model, args.limit)
    if args.json:
        _print([{"run_id": r.run_id, "model": r.model, "as_of": r.as_of, "status": r.status, "dry_run": r.dry_run,
                 "production": r.production_metrics} for r in listed], True)
        return 0
    print(f"{'run':>5} {'model':<11} {'night':<11} {'status':<10} {'users':>6} {'ndcg@10':>8} {'recall@10':>9}")
    for r in listed:
        m = r.production_metrics
        ndcg, recall = m.get("ndcg_at_10"), m.get("recall_at_10")
        status = r.status + (" (dry)" if r.dry_run else "")
        print(f"{r.run_id:>5} {r.model:<11} {r.as_of:%Y-%m-%d} {status:<10} {m.get('users', '-'):>6}"
              f" {ndcg if ndcg is None else round(ndcg, 4)!s:>8} {recall if recall is None else round(recall, 4)!s:>9}")
    return 0


def cmd_run(args, settings: Settings) -> int:
    from recpipe import pipeline

    with pipeline.stage("plan"):
        as_of = args.as_of or default_as_of(settings)
    overrides = args.overrides or {}
    plan = pipeline.make_plan(settings, as_of, epochs=args.epochs, model_overrides=overrides,
                              gate_overrides=args.gate, dry_run=args.dry_run, refit=args.refit,
                              warm_start_epochs=args.warm_start_epochs)
    result = pipeline.run_nightly(settings, plan)
    _print(result, args.json, summarize_nightly(result))
    return 0


def cmd_check_data(args, settings: Settings) -> int:
    """The night's data gate alone; recorded as a dry-run check (never alerts, never a
    later night's reference). Exit 1 when a rule fires, as `recpipe run` would stop."""
    from recpipe import pipeline

    as_of = args.as_of or default_as_of(settings)
    plan = pipeline.make_plan(settings, as_of, gate_overrides=args.gate, dry_run=True)
    result = pipeline.check_data(settings, plan)
    f = result["figures"]
    vanished = ", ".join(f"{f[f'vanished_{w}s']} of {f[f'previous_{w}s']} {w}s vanished"
                         for w in ("user", "movie") if f[f"previous_{w}s"] is not None) or "no previous night to compare"
    _print(result, args.json, f"{result['message']}: {f['rejected']} of {f['lines_read']} ratings lines quarantined"
                              f" ({f['rejected_share']:.2%}), {f['new_ratings']} new ratings since {f['since']},"
                              f" {vanished} ({f['seconds']}s)")
    return 0


def summarize_nightly(result: dict) -> str:
    """A few lines an operator reads after a nightly run."""
    lines = [f"nightly run as of {result['as_of']}:"]
    for decision in result["gate"]["decisions"]:
        metrics = result["evaluation"]["metrics"].get(str(decision["run_id"]), {})
        verdict = "promoted" if decision["promoted"] else "REJECTED: " + "; ".join(
            r["message"] for r in decision["reasons"])
        lines.append(f"  {decision['model']:<11} run {decision['run_id']}: ndcg@10 {metrics.get('ndcg_at_10', float('nan')):.4f}"
                     f" recall@10 {metrics.get('recall_at_10', float('nan')):.4f}"
                     f" on {metrics.get('users', 0)} users -> {verdict}")
    for p in result["publication"].get("published", []):
        lines.append(f"  published {p['model']} run {p['run_id']}: {p['rows']} rows, {p['users']} users,"
                     f" {p['seconds']}s")
    lines.append("  timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from recpipe import registry

    parser = argparse.ArgumentParser(prog="recpipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="database: upgrade (migrate), url, stop (the embedded server)")
    p.add_argument("action", choices=["upgrade", "url", "stop"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("data", help="download a MovieLens data set (checksums verified)")
    p.add_argument("action", choices=["download"])
    p.add_argument("--dataset", choices=["ml-1m", "ml-25m", "ml-32m"], default="ml-1m")
    p.add_argument("--dest", type=lambda s: __import__("pathlib").Path(s), default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("ingest", help="load ratings with start <= time < end from RECPIPE_SOURCE_DIR")
    p.add_argument("--start", type=parse_time)
    p.add_argument("--end", type=parse_time)
    p.add_argument("--all", action="store_true", help="every rating in the files")
    p.add_argument("--format", choices=["auto", "ml-1m", "ml-25m", "ml-32m", "generic"], default=None,
                   help="the source folder's layout (default: RECPIPE_SOURCE_FORMAT, else auto)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("build", help="rebuild the encodings or the sessions of a night")
    p.add_argument("what", choices=["encodings", "sessions"])
    p.add_argument("--as-of", type=parse_time, required=True,
                   help="the night T: encodings and production sessions use the ratings before T - eval window"
                        " (as the nightly does); evaluation sessions use every rating before T")
    p.add_argument("--mode", choices=["gap", "bucket"], default="gap")
    p.add_argument("--gap", type=parse_duration, default=parse_duration("30min"))
    p.add_argument("--bucket", type=parse_duration, default=parse_duration("2h"))
    p.add_argument("--test-days", type=int, default=200)
    p.add_argument("--val-days", type=int, default=200)
    p.add_argument("--purpose", choices=["evaluation", "production"], default="evaluation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train one model for the night --as-of (in this process)")
    p.add_argument("--model", choices=registry.names(), required=True)
    p.add_argument("--as-of", type=parse_time, required=True, help="the night T (trains before T - eval window)")
    p.add_argument("--encodings", type=int, help="encodings artifact id (default: rebuild the night's)")
    p.add_argument("--sessions", type=int, help="session build id (default: rebuild the night's)")
    p.add_argument("--overrides", type=_json_arg, help="model config overrides, a JSON object")
    p.add_argument("--epochs", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="train what a protocol needs and print its metrics")
    p.add_argument("--protocol", choices=["production", "seed000", "seed002", "loo"], default="production")
    p.add_argument("--model", choices=[*registry.names(), "all"], default="all")
    p.add_argument("--cutoff", type=parse_time, help="production: the time cutoff T (default 2000-12-01)")
    p.add_argument("--window", type=parse_duration, help="production: the test window after T (default 365d)")
    p.add_argument("--config", choices=["default", "seed"], default="default",
                   help="seed protocols: the seed's settings or recpipe's defaults")
    p.add_argument("--epochs", type=int)
    p.add_argument("--overrides", type=_json_arg, help="production: config overrides of --model, a JSON object")
    p.add_argument("--out", help="also write the figures to this JSON file (e.g. eval/production.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("publish", help="publish the promoted runs of a night, or roll a model back")
    p.add_argument("--as-of", type=parse_time)
    p.add_argument("--rollback", metavar="MODEL", choices=registry.names(),
                   help="make MODEL's previous live lists live again (the current ones are marked rejected)")
    p.add_argument("--model", action="append", choices=registry.names())
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("report", help="the night report (HTML + figures): the stored one, or write it")
    p.add_argument("--night", type=parse_time, required=True)
    p.add_argument("--write", action="store_true", help="write a new report even when one is stored")
    p.add_argument("--out", type=lambda s: __import__("pathlib").Path(s), help="write into this folder instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("artifacts", help="prune: remove artifact folders no run uses")
    p.add_argument("action", choices=["prune"])
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_artifacts)

    p = sub.add_parser("runs", help="the model runs registry")
    p.add_argument("action", choices=["list"])
    p.add_argument("--model")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("run", help="the whole nightly sequence in one process")
    p.add_argument("--as-of", type=parse_time, help="default: midnight after the newest rating")
    p.add_argument("--epochs", type=int, help="override both models' epochs (smoke runs)")
    p.add_argument("--overrides", type=_json_arg, help='per model: {"autoint": {...}, "gru4rec": {...}}')
    p.add_argument("--gate", type=_json_arg, help="gate overrides, e.g. {\"tolerance\": 0.2}")
    p.add_argument("--dry-run", action="store_true", help="train, evaluate and gate; publish nothing")
    p.add_argument("--refit", choices=["full", "warm_start"],
                   help="refit from scratch or from the gated weights (default: RECPIPE_REFIT, else full)")
    p.add_argument("--warm-start-epochs", type=int, help="a warm-started refit's epochs (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-data", help="the night's data-quality gate alone (exit 1 when a rule fires)")
    p.add_argument("--as-of", type=parse_time, help="default: midnight after the newest rating")
    p.add_argument("--gate", type=_json_arg, help='gate overrides, e.g. {"data": {"max_rejected_share": 0.1}}')
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.from_env()
    import contextlib

    # With --json, stdout carries only the result.
    quiet = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    from recpipe.db import DatabaseNotConfigured
    from recpipe.gate import DataGateError
    from recpipe.plan import PlanError

    try:
        with quiet:
            return args.func(args, settings)
    except (SourceError, PlanError, DatabaseNotConfigured) as exc:
        print(f"recpipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataGateError as exc:
        print(f"recpipe {args.command}: {exc}", file=sys.stderr)  # one line; the alert rows say the same
        return 1
    except _database_errors() as exc:
        print(database_failure_line(args.command, settings, exc), file=sys.stderr)
        return 1
    except SystemError as exc:
        # psycopg2 can surface a server shutdown mid-read as a SystemError caused by it.
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, _database_errors()):
            raise
        if getattr(cause, "recpipe_stage", None) is None:
            cause.recpipe_stage = getattr(exc, "recpipe_stage", None)
        print(database_failure_line(args.command, settings, cause), file=sys.stderr)
        return 1


def _database_errors() -> tuple[type[BaseException], ...]:
    """A lost or refused connection: SQLAlchemy's wrappers, and psycopg2's own errors from
    the COPY paths, which use the driver's cursor directly."""
    import psycopg2
    from sqlalchemy.exc import InterfaceError, OperationalError

    return OperationalError, InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError


def database_failure_line(command: str, settings: Settings, exc: BaseException) -> str:
    """One line an operator can act on: the command, the stage, the database (password
    masked) and the driver's first line (which says which part failed)."""
    from recpipe.db import safe_url

    orig = getattr(exc, "orig", None) or exc
    reason = next((line.strip() for line in str(orig).splitlines() if line.strip()), type(orig).__name__)
    stage = getattr(exc, "recpipe_stage", None)
    if settings.database_url:
        try:
            where = safe_url(settings.database_url)
        except Exception:  # an unparsable URL: never echo it (it may hold a password)
            where = "RECPIPE_DATABASE_URL (unparsable)"
    else:
        where = f"the embedded PostgreSQL under {settings.home / 'pgdata'}"
    return (f"recpipe {command}{f' (stage {stage})' if stage else ''}: database is unreachable or failed"
            f" ({reason}) at {where}; check that it runs and that RECPIPE_DATABASE_URL is right, then run the"
            " command again")


if __name__ == "__main__":
    sys.exit(main())
