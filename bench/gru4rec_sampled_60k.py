"""GRU4Rec on a 60k-item synthetic catalogue: seconds and peak memory per training
mini-batch with the full softmax and with the sampled losses (one process per loss, so
each peak RSS is its own). Items are drawn Zipf-like; the figures are about cost, not
quality.

    python bench/gru4rec_sampled_60k.py [--items 60000] [--batches 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import peak_rss_mib, write_result


def one(loss: str, n_items: int, batches: int) -> dict:
    import numpy as np

    from recpipe.models.gru4rec import GRU4RecConfig
    from recpipe.models.gru4rec.fit import _position_loss
    from recpipe.models.gru4rec.network import _build_networks
    import keras

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
    train_model.compile(optimizer=keras.optimizers.Adam(1e-3),
                        loss=_position_loss if sampled else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = ([items, reset, targets, weights], np.zeros(shape, np.float32)) if sampled else ([items, reset], targets)
    train_model.train_on_batch(x, y, sample_weight=weights)  # trace
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        loss_value = train_model.train_on_batch(x, y, sample_weight=weights)
        times.append(time.perf_counter() - t0)
    return {"loss": loss, "items": n_items, "positions_per_batch": int(np.prod(shape)),
            "candidates_per_row": (int(np.prod(shape)) + cfg.n_sample) if sampled else n_items,
            "seconds_per_batch_median": float(np.median(times)), "peak_rss_mib": peak_rss_mib(),
            "rss_before_model_mib": rss_before, "final_loss": float(np.asarray(loss_value).ravel()[0]),
            "finite": bool(np.isfinite(np.asarray(loss_value)).all())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=60_000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.items, args.batches)))
        return 0
    rows = []
    for loss in ("sampled_softmax", "bpr_max", "cross_entropy"):
        done = subprocess.run([sys.executable, __file__, "--one", loss, "--items", str(args.items),
                               "--batches", str(args.batches)], capture_output=True, text=True)
        if done.returncode:
            rows.append({"loss": loss, "error": done.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_result("gru4rec_sampled_60k", {"batch": "128 lanes x 16 steps, hidden 128, n_sample 2048", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
