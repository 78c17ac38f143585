"""GRU4Rec on a 60k-item synthetic catalogue: seconds and peak memory per training
mini-batch with the full softmax and with the sampled losses (one process per variant,
so each peak RSS is its own). Items are drawn Zipf-like; the figures are about cost, not
quality.

The sampled losses train with LazyAdam (recpipe.models.lazy_adam: only the rows a
mini-batch touches move); the `adam` variants run Keras's dense Adam on the same network
beside it, and the `--small-items` catalogue (ML-1M's size) shows what a step costs when
the catalogue is small: with lazy updates a sampled step should cost about the same at
both sizes.

    python bench/gru4rec_sampled_60k.py [--items 60000] [--small-items 2500] [--batches 20]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import load_average, matmul_gflops, peak_rss_mib, write_result


def one(variant: str, n_items: int, batches: int) -> dict:
    import numpy as np

    from recpipe.models.gru4rec import GRU4RecConfig
    from recpipe.models.gru4rec.fit import _position_loss
    from recpipe.models.gru4rec.network import _build_networks
    from recpipe.models.lazy_adam import LazyAdam
    import keras

    loss, optimizer = variant.split(":")
    cfg = GRU4RecConfig(loss=loss, n_sample=2048, epochs=1)
    rng = np.random.default_rng(0)
    shape = (cfg.batch_size, cfg.bptt)
    items = (rng.zipf(1.2, size=shape) % n_items).astype(np.int32)
    targets = (rng.zipf(1.2, size=shape) % n_items).astype(np.int32)
    reset = np.zeros(shape, np.float32)
    weights = np.ones(shape, np.float32)
    rss_before = peak_rss_mib()
    train_model, _ = _build_networks(n_items, cfg)
    sampled = loss != "cross_entropy"
    if sampled:
        train_model.get_layer("sampled_loss").set_popularity(np.bincount(targets.ravel(), minlength=n_items))
    train_model.compile(optimizer=LazyAdam(1e-3) if optimizer == "lazy" else keras.optimizers.Adam(1e-3),
                        loss=_position_loss if sampled else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = ([items, reset, targets, weights], np.zeros(shape, np.float32)) if sampled else ([items, reset], targets)
    train_model.train_on_batch(x, y, sample_weight=weights)  # trace
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        loss_value = train_model.train_on_batch(x, y, sample_weight=weights)
        times.append(time.perf_counter() - t0)
    return {"loss": loss, "optimizer": optimizer, "items": n_items, "positions_per_batch": int(np.prod(shape)),
            "candidates_per_row": (int(np.prod(shape)) + cfg.n_sample) if sampled else n_items,
            "seconds_per_batch_median": float(np.median(times)), "peak_rss_mib": peak_rss_mib(),
            "rss_before_model_mib": rss_before, "final_loss": float(np.asarray(loss_value).ravel()[0]),
            "finite": bool(np.isfinite(np.asarray(loss_value)).all())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=60_000)
    ap.add_argument("--small-items", type=int, default=2_500)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.items, args.batches)))
        return 0
    result = {"probe_before": matmul_gflops(), "load_before": load_average(),
              "batch": "128 lanes x 16 steps, hidden 128, n_sample 2048", "rows": []}
    rows = result["rows"]
    variants = [(v, args.items) for v in ("sampled_softmax:lazy", "sampled_softmax:adam", "bpr_max:lazy",
                                          "cross_entropy:adam")]
    variants += [(v, args.small_items) for v in ("sampled_softmax:lazy", "sampled_softmax:adam", "cross_entropy:adam")]
    for variant, items in variants:
        done = subprocess.run([sys.executable, __file__, "--one", variant, "--items", str(items),
                               "--batches", str(args.batches)], capture_output=True, text=True)
        if done.returncode:
            rows.append({"variant": variant, "items": items, "error": done.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result["probe_after"], result["load_after"] = matmul_gflops(), load_average()
    write_result("gru4rec_sampled_60k", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
