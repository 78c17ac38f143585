"""AutoInt+'s training memory: `model.fit` on numpy arrays against `ShuffledBatches`
(what fit_autoint feeds), side by side in one run.

Each side runs in its own process (peak RSS is per process), on the same generated codes:
`--rows` training rows (default 50M: a 25M-rating night with one negative per rating)
of 14 fields sized like that night's (162,541 users, 62,424 movies, ...). Both fit
DEFAULT_CONFIG for `--steps` mini-batches of 2,048 (not whole epochs: memory is
reached at the start, and the step rate is a rate). Recorded per side: RSS with the
arrays built, peak RSS during fit (sampled every 50 ms), its excess over the arrays,
the seconds before the first step, and steps/s after `--warmup` steps; the sides
alternate over `--rounds`. Also the machine probe and the load before and after.

    python bench/autoint_memory.py [--rows 50000000] [--steps 400] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import load_average, machine, matmul_gflops, write_result

FIELD_DIMS = [162_542, 62_424, 3, 8, 22, 3_500, 20, 20, 20, 12, 40, 30, 10, 5]
SIDES = ("arrays", "batches")


def child(side: str, rows: int, steps: int, warmup: int) -> dict:
    import numpy as np
    import psutil

    process, peak = psutil.Process(), [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    import keras

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recpipe.models.autoint.config import DEFAULT_CONFIG
    from recpipe.models.autoint.fit import ShuffledBatches
    from recpipe.models.autoint.network import build_autoint, compile_autoint

    rng = np.random.default_rng(0)
    X = np.empty((rows, len(FIELD_DIMS)), np.int32)
    for j, dim in enumerate(FIELD_DIMS):
        X[:, j] = rng.integers(0, dim, rows)
    y = rng.integers(0, 2, rows).astype(np.float32)
    with_arrays = process.memory_info().rss
    marks: dict[str, float] = {}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.setdefault("first", time.perf_counter())
            if batch == warmup:
                marks["warm"] = time.perf_counter()
            if batch >= warmup + steps:
                marks["end"] = time.perf_counter()
                self.model.stop_training = True

    keras.utils.set_random_seed(0)
    model = compile_autoint(build_autoint(FIELD_DIMS, DEFAULT_CONFIG), DEFAULT_CONFIG, jit_compile=False)
    started = time.perf_counter()
    batch = DEFAULT_CONFIG.batch_size
    if side == "arrays":
        model.fit(X, y, batch_size=batch, epochs=1, shuffle=True, callbacks=[Clock()], verbose=0)
    else:
        model.fit(ShuffledBatches(X, y, batch, seed=0), epochs=1, callbacks=[Clock()], verbose=0)
    time.sleep(0.2)
    gib = 2 ** 30
    return {"side": side, "rows": rows, "arrays_gib": round((X.nbytes + y.nbytes) / gib, 3),
            "rss_with_arrays_gib": round(with_arrays / gib, 3), "peak_rss_gib": round(peak[0] / gib, 3),
            "peak_over_arrays_gib": round((peak[0] - with_arrays) / gib, 3),
            "seconds_to_first_step": round(marks["first"] - started, 2),
            "steps_per_s": round(steps / (marks["end"] - marks["warm"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.steps, args.warmup)))
        return
    result = {"benchmark": "autoint_memory", "machine": machine(), "probe_before": matmul_gflops(),
              "load_before": load_average(), "rows": args.rows, "steps": args.steps, "warmup": args.warmup,
              "runs": []}
    for round_no in range(args.rounds):
        for side in SIDES if round_no % 2 == 0 else SIDES[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", side, "--rows", str(args.rows),
                                  "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                 check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            print(run, flush=True)
            result["runs"].append(run)
    result["probe_after"], result["load_after"] = matmul_gflops(), load_average()
    by_side = {side: [r for r in result["runs"] if r["side"] == side] for side in SIDES}
    result["peak_rss_ratio_arrays_over_batches"] = round(
        max(r["peak_rss_gib"] for r in by_side["arrays"]) / max(r["peak_rss_gib"] for r in by_side["batches"]), 2)
    result["steps_per_s_ratio_batches_over_arrays"] = round(
        sum(r["steps_per_s"] for r in by_side["batches"]) / sum(r["steps_per_s"] for r in by_side["arrays"]), 3)
    print(f"peak RSS arrays / batches: {result['peak_rss_ratio_arrays_over_batches']}x;"
          f" steps/s batches / arrays: {result['steps_per_s_ratio_batches_over_arrays']}x")
    write_result("autoint_memory", result)


if __name__ == "__main__":
    main()
