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
        print(json.dumps(result, indent=2, default=str))
    elif text is not None:
        print(text)


def cmd_db(args, settings: Settings) -> int:
    from recpipe import db

    if args.action == "upgrade":
        engine = db.make_engine(settings)
        applied = db.upgrade(engine)
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'database already up to date'}")
    elif args.action == "url":
        print(db.resolve_database_url(settings))
    elif args.action == "stop":
        print("embedded PostgreSQL stopped" if db.stop_embedded(settings.home) else "embedded PostgreSQL not running")
    return 0


def cmd_data(args, settings: Settings) -> int:
    from recpipe.source import download_ml1m

    dest = args.dest or settings.home / "data"
    folder = download_ml1m(dest)
    print(f"ML-1M verified at {folder}; use it with RECPIPE_SOURCE_DIR={folder}")
    return 0


def cmd_ingest(args, settings: Settings) -> int:
    from recpipe import pipeline

    if not args.all and args.start is None and args.end is None:
        raise SystemExit("ingest: give --start/--end or --all")
    report = pipeline.ingest_interval(settings, None if args.all else args.start, None if args.all else args.end)
    _print(report, args.json, report["summary"])
    return 0


def cmd_build(args, settings: Settings) -> int:
    from recpipe import pipeline

    if args.what == "encodings":
        result = pipeline.rebuild_encodings(settings, args.as_of)
        _print(result, args.json, f"encodings artifact {result['artifact_id']} as of {args.as_of:%Y-%m-%d %H:%M}Z:"
               f" field_dims {result['field_dims']} from {result['rows']} ratings -> {result['path']}")
    else:
        from recpipe.sessions import SessionParams

        params = SessionParams(
            mode=args.mode, session_gap=args.gap, bucket=args.bucket,
            test_days=args.test_days, val_days=args.val_days,
        )
        result = pipeline.rebuild_sessions(settings, args.as_of, params=params, purpose=args.purpose)
        lines = [f"session build {result['build_id']} ({args.purpose}, {args.mode}) as of {args.as_of:%Y-%m-%d}:"]
        for split, st in result["stats"].items():
            lines.append(f"  {split:<10} events {st['events']:>9,}  sessions {st['sessions']:>7,}  items {st['items']:>6,}")
        _print(result, args.json, "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recpipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="database: upgrade (migrate), url, stop (the embedded server)")
    p.add_argument("action", choices=["upgrade", "url", "stop"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("data", help="download MovieLens-1M (checksums verified)")
    p.add_argument("action", choices=["download"])
    p.add_argument("--dest", type=lambda s: __import__("pathlib").Path(s), default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("ingest", help="load ratings with start <= time < end from RECPIPE_SOURCE_DIR")
    p.add_argument("--start", type=parse_time)
    p.add_argument("--end", type=parse_time)
    p.add_argument("--all", action="store_true", help="every rating in the files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("build", help="rebuild encodings or sessions as of a time")
    p.add_argument("what", choices=["encodings", "sessions"])
    p.add_argument("--as-of", type=parse_time, required=True)
    p.add_argument("--mode", choices=["gap", "bucket"], default="gap")
    p.add_argument("--gap", type=parse_duration, default=parse_duration("30min"))
    p.add_argument("--bucket", type=parse_duration, default=parse_duration("2h"))
    p.add_argument("--test-days", type=int, default=200)
    p.add_argument("--val-days", type=int, default=200)
    p.add_argument("--purpose", choices=["evaluation", "production"], default="evaluation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.from_env()
    try:
        return args.func(args, settings)
    except SourceError as exc:
        print(f"recpipe: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
