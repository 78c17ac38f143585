"""The README's main job (`make run`): set up, ingest, and run the nightly pipeline once.

With no RECPIPE_DATABASE_URL it uses the embedded PostgreSQL under RECPIPE_HOME; with
no RECPIPE_SOURCE_DIR it downloads MovieLens-1M (checksums verified).
"""
from __future__ import annotations

import logging
import sys
import time

from recpipe.config import Settings
from recpipe.source import SourceError


def ensure_source(settings: Settings) -> Settings:
    if settings.source_dir is not None:
        return settings
    from recpipe.source import download_ml1m

    print("RECPIPE_SOURCE_DIR is not set: downloading MovieLens-1M ...", flush=True)
    return settings.with_(source_dir=download_ml1m(settings.home / "data"))


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    started = time.perf_counter()
    try:
        settings = ensure_source(settings)
        from recpipe import db, pipeline

        engine = db.make_engine(settings)
        applied = db.upgrade(engine)
        print(f"database: {engine.url.render_as_string(hide_password=True)}"
              f" ({len(applied)} migration(s) applied)", flush=True)
        report = pipeline.ingest_interval(settings, None, None)
        print(report["summary"], flush=True)
    except SourceError as exc:
        print(f"recpipe: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
