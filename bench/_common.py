"""Shared set-up for the benchmarks: a scratch database and the data folder."""
from __future__ import annotations

import json
import os
import platform
import resource
import secrets
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ML1M = ROOT.parent / "shared" / "data" / "ml-1m"
SYSTEM_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def source_dir() -> Path:
    explicit = os.environ.get("RECPIPE_SOURCE_DIR")
    folder = Path(explicit) if explicit else ML1M
    if not (folder / "ratings.dat").is_file():
        sys.exit(f"benchmarks need ML-1M: set RECPIPE_SOURCE_DIR (looked in {folder})")
    return folder


@contextmanager
def scratch_database():
    """A fresh database on RECPIPE_BENCH_SERVER_URL's server (default: the local PostgreSQL)."""
    import sqlalchemy as sa

    server = sa.engine.make_url(os.environ.get("RECPIPE_BENCH_SERVER_URL", SYSTEM_PG))
    name = f"recpipe_bench_{secrets.token_hex(3)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> dict:
    """The 1/5/15-minute load averages: what else ran on the cores while measuring."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cpus": os.cpu_count()}


def matmul_gflops(n: int = 2048, repeat: int = 5) -> dict:
    """fp32 GFLOP/s of an n x n matrix product (best of `repeat`), through numpy and
    through the Keras backend: the machine's compute ceiling, measured where it runs."""
    import numpy as np
    import keras

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return flops / min(times) / 1e9

    ka, kb = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
    return {
        "n": n,
        "numpy_gflops": best(lambda: a @ b),
        "keras_backend": keras.backend.backend(),
        "keras_gflops": best(lambda: keras.ops.convert_to_numpy(keras.ops.matmul(ka, kb))),
    }


def accelerators() -> list[str]:
    """The Keras backend's devices (a GPU run says which card)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax
        return [f"{d.platform}: {d.device_kind}" for d in jax.devices()]
    if keras.backend.backend() == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    import tensorflow as tf
    return [d.name for d in tf.config.list_logical_devices()]


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0]}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "measured_at": datetime.now(timezone.utc).isoformat(), "machine": machine(),
               **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path
