"""AutoInt+ training step cost against the size of its embedding table: the product's
optimizer (Keras's AdamW, dense: its moment decay and weight decay touch every row of the
table at every step) beside the config's `optimizer: lazy_adam` (recpipe's LazyAdam: only the rows
a mini-batch looks up move, and decay), side by side
in one process, alternating. The product's DEFAULT_CONFIG (batch 2,048, embedding 32);
two table sizes: ML-1M's users and movies (6,040 + 3,706) and ML-25M's (162,541 +
62,423), each with the same 12 small attribute fields. Codes are random (users uniform,
movies Zipf-like): the figures are about cost, not quality.

    python bench/autoint_tables.py [--steps 60] [--rounds 3]
"""
from __future__ import annotations

import argparse
import time

from _common import load_average, matmul_gflops, write_result

SMALL_FIELDS = [2, 7, 21, 19, 19, 19, 10, 10, 10, 10, 10, 10]
SCALES = {"ml-1m": (6_040, 3_706), "ml-25m": (162_541, 62_423)}


def step_ms(scale: str, optimizer: str, steps: int) -> float:
    import keras
    import numpy as np

    from recpipe.models.autoint import network
    from recpipe.models.autoint.config import DEFAULT_CONFIG

    users, movies = SCALES[scale]
    dims = [users, movies, *SMALL_FIELDS]
    cfg = DEFAULT_CONFIG
    rng = np.random.default_rng(0)
    n = cfg.batch_size * (steps + 5)
    X = np.column_stack([rng.integers(0, users, n), rng.zipf(1.3, n) % movies]
                        + [rng.integers(0, d, n) for d in SMALL_FIELDS]).astype(np.int32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = network.build_autoint(dims, cfg)
    network.compile_autoint(model, cfg if optimizer == "product" else cfg.with_(optimizer="lazy_adam"),
                            jit_compile=False, auc=False)
    b = cfg.batch_size
    for i in range(5):  # trace and warm up
        model.train_on_batch(X[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
    started = time.perf_counter()
    for i in range(5, steps + 5):
        model.train_on_batch(X[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
    return 1000 * (time.perf_counter() - started) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from recpipe.models.autoint import network
    from recpipe.models.autoint.config import DEFAULT_CONFIG

    probe, load = matmul_gflops(), load_average()
    product = type(network._optimizer(DEFAULT_CONFIG)).__name__
    ms: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for scale in SCALES:
            for optimizer in ("product", "lazy"):
                key = f"{scale}:{optimizer}"
                ms.setdefault(key, []).append(round(step_ms(scale, optimizer, args.steps), 2))
                print(key, ms[key][-1], "ms/step", flush=True)
    best = {k: min(v) for k, v in ms.items()}
    summary = {
        "product_optimizer": product,
        "growth_1m_to_25m_tables": {o: round(best[f"ml-25m:{o}"] / best[f"ml-1m:{o}"], 2) for o in ("product", "lazy")},
        "lazy_speedup": {s: round(best[f"{s}:product"] / best[f"{s}:lazy"], 2) for s in SCALES},
    }
    print(summary)
    write_result("autoint_tables", {"steps": args.steps, "rounds": args.rounds, "scales": SCALES,
                                    "small_fields": SMALL_FIELDS, "ms_per_step": ms, "best_ms_per_step": best,
                                    **summary, "probe_before": probe, "load_before": load,
                                    "probe_after": matmul_gflops(), "load_after": load_average()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
