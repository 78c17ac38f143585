"""The seeds' training loops and recpipe's models, timed side by side in one process.

Same machine, same process, same data, alternating (seed, ours, seed, ours, ... with
the order flipped every round, so drifting load hits both sides alike):
- GRU4Rec: the seed 002 loop (`seed_loops.seed002_train_steps`: one-hot input,
  `train_on_batch` per step, 128 lanes, hidden 64) for a FIXED SUBSET of steps of its
  first epoch (`--gru-steps`, after `--gru-warmup` untimed steps: the whole epoch is
  6,164 steps, ~3-4 minutes on two cores), against `fit_gru4rec` with SEED002_CONFIG
  (hidden 64, 128 lanes, bptt 16) for `--gru-epochs` whole epochs. Events/s is a rate:
  a subset of the seed's epoch measures it as well as the whole epoch, and leaving out
  the seed's first steps (graph tracing) only flatters the seed, whereas our figure
  includes our tracing.
- AutoInt+: the seed 000 model and `model.fit(DataFrame, validation_split=0.1)`
  (`seed_loops.seed000_fit`) against `fit_autoint` with SEED000_CONFIG, both on the
  same rows (seed 000's 80 % train split, encoded once), batch 2048, `--autoint-epochs`
  epochs each; samples/s = (train + validation rows) x epochs / fit seconds on both sides.
Data: ML-1M at RECPIPE_SOURCE_DIR or ../shared/data/ml-1m; without it, ML-1M-sized
data from `recpipe.generate` (same layout, so the same code paths run).
Also recorded: a machine probe (numpy and TensorFlow fp32 matmul GFLOP/s) and the load
average before and after. Goals (issue #12): GRU4Rec >= 10x the seed loop, AutoInt+
>= 2x the seed's fit.

    python bench/seed_compare.py [--rounds 2] [--gru-steps 1500] [--gru-epochs 1] [--autoint-epochs 1]
    python bench/seed_compare.py --profile     # variants of both models (adds "profile")
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ML1M, RESULTS, load_average, machine, matmul_gflops, peak_rss_mib

GOALS = {"gru4rec": 10.0, "autoint": 2.0}
NAME = "seed_compare"


# ----------------------------------------------------------------------------- data
def load_data(generated_ratings: int = 1_000_209) -> tuple[dict, tuple]:
    """(description, (ratings, movies, users)) from ML-1M, or generated in its layout."""
    from recpipe.source import load_ml1m_frames

    explicit = os.environ.get("RECPIPE_SOURCE_DIR")
    folder = Path(explicit) if explicit else ML1M
    if (folder / "ratings.dat").is_file():
        return {"source": "ml-1m", "folder": str(folder)}, load_ml1m_frames(folder)
    from recpipe.generate import Spec, write

    # ML-1M's size: 1M ratings of ~6k users on ~3.7k items; the seed split needs a span
    # ending with 400 days of sessions, which the default span has.
    spec = Spec(ratings=generated_ratings, users=6_040, items=3_706, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp, spec, "ml-1m")
        frames = load_ml1m_frames(Path(tmp))
    return {"source": "recpipe.generate", "spec": spec.__dict__}, frames


def gru_train_events(ratings):
    from recpipe.sessions import SEED002_PARAMS, make_session_sets

    return make_session_sets(ratings, SEED002_PARAMS, "evaluation")["train"]


def autoint_rows(ratings, movies, users):
    """Seed 000's train part (random 80 %, random_state 42 over ratings.dat order), encoded."""
    from sklearn.model_selection import train_test_split

    from recpipe.features import FieldEncoders, derive_fields

    order = ratings.sort_values("line_no", kind="stable").reset_index(drop=True)
    frame = derive_fields(order, movies, users)
    train, _ = train_test_split(frame, test_size=0.2, random_state=42)
    encoders = FieldEncoders().fit(train)
    return encoders.transform(train), train["label"].to_numpy(np.float32), encoders.field_dims


# -------------------------------------------------------------------------- runners
def ours_gru(train, epochs: int, **changes) -> dict:
    from recpipe.models.gru4rec import SEED002_CONFIG, GRU4RecConfig, fit_gru4rec

    config = GRU4RecConfig.from_dict({**SEED002_CONFIG.to_dict(), "epochs": epochs, "patience": 0, **changes})
    cpu = time.process_time()
    _, history = fit_gru4rec(train, config, verbose=0)
    cpu = time.process_time() - cpu  # the whole call: set-up and packing too (conservative)
    events = int(history["train_steps"]) * int(history["epochs_run"])
    return {"events_per_s": history["events_per_s"], "train_seconds": history["train_seconds"],
            "cpu_seconds": cpu, "events_per_cpu_s": events / cpu,
            "events": int(history["train_steps"]) * int(history["epochs_run"]), "epochs": int(history["epochs_run"]),
            "config": {k: config.to_dict()[k] for k in ("hidden", "batch_size", "bptt", "jit_compile")},
            "last_loss": history["loss"][-1]}


def ours_autoint(X, y, field_dims, epochs: int) -> dict:
    from recpipe.models.autoint import SEED000_CONFIG, fit_autoint

    config = SEED000_CONFIG.with_(epochs=epochs, patience=epochs)
    cpu = time.process_time()
    _, history = fit_autoint(X, y, field_dims, config, verbose=0)
    cpu = time.process_time() - cpu  # the whole call: model building too (conservative)
    rows = int(history["train_rows"] + history["val_rows"]) * int(history["epochs_run"])
    return {"samples_per_s": history["samples_per_s"], "fit_seconds": history["fit_seconds"],
            "cpu_seconds": cpu, "samples_per_cpu_s": rows / cpu,
            "rows": int(history["train_rows"] + history["val_rows"]), "epochs": int(history["epochs_run"]),
            "loss": history["loss"], "val_loss": history.get("val_loss", [])}


def seed_gru(train, steps: int, warmup: int) -> dict:
    from seed_loops import seed002_train_steps

    return seed002_train_steps(train, steps=steps, warmup=warmup)


def seed_autoint(X, y, field_dims, epochs: int) -> dict:
    from recpipe.features import FIELDS
    from seed_loops import seed000_fit

    return seed000_fit(X, y, field_dims, epochs, columns=FIELDS)


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# -------------------------------------------------------------------------- compare
def compare(args) -> dict:
    import tensorflow as tf

    load_before = load_average()
    probe = matmul_gflops()
    print(f"machine: numpy {probe['numpy_gflops']:.0f} GFLOP/s, {probe['keras_backend']} {probe['keras_gflops']:.0f}"
          f" GFLOP/s fp32; load {load_before['load_1m']:.2f}", flush=True)
    t0 = time.perf_counter()
    data, (ratings, movies, users) = load_data()
    train = gru_train_events(ratings)
    X, y, field_dims = autoint_rows(ratings, movies, users)
    data.update(gru_train_events=int(len(train)), autoint_rows=int(len(X)), prepare_seconds=time.perf_counter() - t0)
    print(f"data: {data['source']}, GRU4Rec train {len(train):,} events, AutoInt+ {len(X):,} rows", flush=True)
    runs = {"gru4rec": {"seed": [], "ours": []}, "autoint": {"seed": [], "ours": []}}
    steps = [
        ("gru4rec", "seed", lambda: seed_gru(train, args.gru_steps, args.gru_warmup), "events_per_s"),
        ("gru4rec", "ours", lambda: ours_gru(train, args.gru_epochs), "events_per_s"),
        ("autoint", "seed", lambda: seed_autoint(X, y, field_dims, args.autoint_epochs), "samples_per_s"),
        ("autoint", "ours", lambda: ours_autoint(X, y, field_dims, args.autoint_epochs), "samples_per_s"),
    ]
    for r in range(args.rounds):
        for model in ("gru4rec", "autoint"):
            pair = [s for s in steps if s[0] == model]
            for _, side, fn, key in (pair if r % 2 == 0 else pair[::-1]):
                load = os.getloadavg()[0]
                result = fn()
                result["load_1m_before"] = load
                runs[model][side].append(result)
                cpu_key = key.replace("_per_s", "_per_cpu_s")
                print(f"round {r + 1} {model} {side}: {result[key]:,.0f} {key.replace('_per_s', '')}/s,"
                      f" {result[cpu_key]:,.0f} per CPU-s (load {load:.2f})", flush=True)
    anatomy = step_anatomy(int(train["movie_id"].nunique()), field_dims)
    for model in ("gru4rec", "autoint"):
        a = anatomy[model]
        print(f"step anatomy {model}: CPU ms/step {({k: round(v, 1) for k, v in a['cpu_ms_per_step'].items()})},"
              f" step ratio {a['step_ratio']:.2f}x, bound {a['bound_ratio']:.2f}x", flush=True)
    load_after = load_average()
    summary = {}
    for model, key in (("gru4rec", "events_per_s"), ("autoint", "samples_per_s")):
        seed, ours = _median(runs[model]["seed"], key), _median(runs[model]["ours"], key)
        summary[model] = {f"seed_{key}": seed, f"ours_{key}": ours, "ratio": ours / seed, "goal": GOALS[model],
                          "goal_met": ours / seed >= GOALS[model],
                          "ratios_per_round": [o[key] / s[key] for s, o in zip(runs[model]["seed"], runs[model]["ours"])]}
        cpu_key = key.replace("_per_s", "_per_cpu_s")
        seed_cpu, ours_cpu = _median(runs[model]["seed"], cpu_key), _median(runs[model]["ours"], cpu_key)
        summary[model].update({f"seed_{cpu_key}": seed_cpu, f"ours_{cpu_key}": ours_cpu,
                               "ratio_cpu_time": ours_cpu / seed_cpu})
    summary["gru4rec"]["seed_events_per_s_with_warmup"] = _median(runs["gru4rec"]["seed"], "events_per_s_with_warmup")
    return {
        "what": "seed notebooks' training loops vs recpipe's fit functions, same process, same data, alternating",
        "settings": {"rounds": args.rounds, "gru_steps": args.gru_steps, "gru_warmup": args.gru_warmup,
                     "gru_epochs": args.gru_epochs, "autoint_epochs": args.autoint_epochs,
                     "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                     "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                     "tf_version": tf.__version__},
        "notes": [
            "seed GRU4Rec: a fixed subset of steps of its first epoch, first steps untimed (tracing); "
            "ours: whole epochs, tracing included. Events/s is a rate: the subset measures it.",
            "seed AutoInt+: under Keras 3 (the notebook's) its tf.Variable attention projections are not "
            "trained, so its backward pass is cheaper than a correct AutoInt+'s.",
            "ratio = median(ours) / median(seed) over rounds (wall clock). ratio_cpu_time uses CPU "
            "seconds of the process instead, which other jobs on the cores disturb less; ours counts "
            "its whole fit call (set-up included), the seed only its timed steps / fit.",
        ],
        "data": data, "probe": probe, "load_before": load_before, "load_after": load_after,
        "summary": summary, "step_anatomy": anatomy, "runs": runs, "peak_rss_mib": peak_rss_mib(),
    }


# -------------------------------------------------------------------- step anatomy
def _cpu_ms_per_call(fn, calls: int, warmup: int = 2) -> float:
    """CPU milliseconds of this process per call of fn (after untimed warm-up calls:
    tracing); CPU time, because the wall clock of a shared machine is too noisy here."""
    import tensorflow as tf

    for _ in range(warmup):
        out = fn()
    started = time.process_time()
    for _ in range(calls):
        out = fn()
    for t in tf.nest.flatten(out):  # wait for the last call's results
        np.asarray(tf.convert_to_tensor(t))
    return 1000 * (time.process_time() - started) / calls


def step_anatomy(n_items: int, field_dims, calls: int = 12) -> dict:
    """Where one training step's CPU time goes, ours beside the seed's, on random inputs
    of the benchmark's shapes. For each model: a whole step of ours and of the seed
    (train_on_batch), and the part of ours that the exact loss cannot avoid (GRU4Rec:
    the full-softmax output layer's three GEMMs and cross-entropy, forward and backward;
    AutoInt+: the embedding and the interacting layers, forward and backward).
    `bound_ratio` = seed per event / that part per event: the speed-up over the seed if
    all the rest of our step cost nothing."""
    import keras
    import tensorflow as tf

    from recpipe.models.autoint import SEED000_CONFIG, build_autoint, compile_autoint
    from recpipe.models.gru4rec import SEED002_CONFIG
    from recpipe.models.gru4rec.network import _build_networks
    from seed_loops import seed000_model, seed002_model

    rng = np.random.default_rng(0)
    cfg = SEED002_CONFIG
    lanes, bptt, n = cfg.batch_size, cfg.bptt, cfg.batch_size * cfg.bptt
    keras.utils.set_random_seed(0)
    train_model, _ = _build_networks(n_items, cfg)
    train_model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    items = rng.integers(0, n_items, (lanes, bptt)).astype(np.int32)
    reset = (rng.random((lanes, bptt)) < 0.1).astype(np.float32)
    targets = rng.integers(0, n_items, (lanes, bptt)).astype(np.int32)
    weights = np.ones((lanes, bptt), np.float32)
    ours_step = _cpu_ms_per_call(lambda: train_model.train_on_batch([items, reset], targets, sample_weight=weights),
                                 calls)
    h = tf.constant(rng.standard_normal((n, cfg.hidden)).astype(np.float32))
    w = tf.Variable(rng.standard_normal((cfg.hidden, n_items)).astype(np.float32) * 0.05)
    b = tf.Variable(np.zeros(n_items, np.float32))
    t = tf.constant(targets.reshape(-1))

    @tf.function
    def output_layer():
        with tf.GradientTape() as tape:
            tape.watch(h)
            logits = tf.matmul(h, w) + b
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(t, logits))
        return tape.gradient(loss, [w, b, h])

    ours_output = _cpu_ms_per_call(output_layer, calls)
    seed = seed002_model(n_items)
    x1 = np.expand_dims(keras.utils.to_categorical(items[:, 0], num_classes=n_items), axis=1)
    y1 = keras.utils.to_categorical(targets[:, 0], num_classes=n_items)
    seed_step = _cpu_ms_per_call(lambda: seed.train_on_batch(x1, y1), calls * 4)
    gru = {"events_per_step": {"ours": n, "seed": lanes},
           "cpu_ms_per_step": {"ours": ours_step, "ours_output_layer_only": ours_output, "seed": seed_step},
           "cpu_us_per_event": {"ours": 1000 * ours_step / n, "ours_output_layer_only": 1000 * ours_output / n,
                                "seed": 1000 * seed_step / lanes},
           "output_layer_share_of_ours": ours_output / ours_step,
           "bound_ratio": (seed_step / lanes) / (ours_output / n),
           "step_ratio": (seed_step / lanes) / (ours_step / n)}

    acfg, batch = SEED000_CONFIG, SEED000_CONFIG.batch_size
    X = np.stack([rng.integers(0, int(d), batch) for d in field_dims], axis=1).astype(np.int32)
    yb = (rng.random((batch, 1)) < 0.5).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = compile_autoint(build_autoint(field_dims, acfg), acfg, jit_compile=False)
    ours_a = _cpu_ms_per_call(lambda: model.train_on_batch(X, yb), calls)
    last = model.get_layer(f"interacting_{acfg.att_layers - 1}")
    attention = keras.Model(model.inputs, last.output)
    xt = tf.constant(X)

    @tf.function
    def interacting():
        with tf.GradientTape() as tape:
            out = attention(xt, training=True)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, attention.trainable_variables)

    ours_att = _cpu_ms_per_call(interacting, calls)
    seed_model = seed000_model(field_dims)
    seed_a = _cpu_ms_per_call(lambda: seed_model.train_on_batch(X, yb), calls)
    autoint = {"rows_per_step": batch,
               "cpu_ms_per_step": {"ours": ours_a, "ours_embedding_and_interacting_only": ours_att, "seed": seed_a},
               "interacting_share_of_ours": ours_att / ours_a,
               "bound_ratio": seed_a / ours_att, "step_ratio": seed_a / ours_a}
    return {"what": "CPU ms per training step (process CPU time, random inputs of the benchmark's shapes); "
            "bound_ratio = seed per event / our unavoidable part per event",
            "calls": calls, "load_1m_before": os.getloadavg()[0], "gru4rec": gru, "autoint": autoint}


# -------------------------------------------------------------------------- profile
@contextlib.contextmanager
def _steps_per_execution(n: int):
    """Compile every Keras model with steps_per_execution=n for the duration (a probe of
    per-step overhead; fit_gru4rec has no such option)."""
    import keras

    original = keras.Model.compile

    def compile_(self, *a, **kw):
        kw["steps_per_execution"] = n
        return original(self, *a, **kw)

    keras.Model.compile = compile_
    try:
        yield
    finally:
        keras.Model.compile = original


def _seed_step_breakdown(train, steps: int = 300) -> dict:
    """Where a seed GRU4Rec step goes: one-hot building, state reset, train_on_batch."""
    import keras

    from seed_loops import SessionLoader, _reset_hidden_states, seed002_frame, seed002_model

    df = seed002_frame(train)
    n_items = int(df["ItemId"].nunique())
    model = seed002_model(n_items)
    spent = {"loader": 0.0, "reset_state": 0.0, "one_hot": 0.0, "train_on_batch": 0.0}
    it = iter(SessionLoader(df, 128))
    for k in range(steps + 20):
        a = time.perf_counter()
        feat, target, mask = next(it)
        b = time.perf_counter()
        _reset_hidden_states(model, mask)
        c = time.perf_counter()
        x = np.expand_dims(keras.utils.to_categorical(feat, num_classes=n_items), axis=1)
        t = keras.utils.to_categorical(target, num_classes=n_items)
        d = time.perf_counter()
        model.train_on_batch(x, t)
        e = time.perf_counter()
        if k >= 20:
            for name, v in zip(spent, (b - a, c - b, d - c, e - d)):
                spent[name] += v
    return {"steps": steps, "ms_per_step": {k: 1000 * v / steps for k, v in spent.items()}}


def _gru_in_subprocess(intra: int, inter: int, epochs: int, max_events: int) -> dict:
    """fit_gru4rec in a fresh process with TF thread pools set before TF starts."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench');"
        "import tensorflow as tf;"
        f"tf.config.threading.set_intra_op_parallelism_threads({intra});"
        f"tf.config.threading.set_inter_op_parallelism_threads({inter});"
        "import seed_compare as s;"
        f"d, (r, m, u) = s.load_data(); t = s._head_sessions(s.gru_train_events(r), {max_events});"
        f"print('RESULT' + json.dumps(s.ours_gru(t, {epochs})))"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _head_sessions(train, max_events: int):
    """The first sessions (in session order) holding about max_events events."""
    sizes = train.groupby("session_id", sort=True).size()
    keep = sizes.index[sizes.cumsum() <= max_events]
    return train[train["session_id"].isin(keep)]


@contextlib.contextmanager
def _autoint_without_auc():
    """fit_autoint compiles with an AUC metric; this drops it for the duration (a probe)."""
    import recpipe.models.autoint as autoint

    original = autoint.compile_autoint

    def compile_(model, config, jit_compile="auto", auc=True, steps_per_execution=1):
        return original(model, config, jit_compile=jit_compile, auc=False, steps_per_execution=steps_per_execution)

    autoint.compile_autoint = compile_
    try:
        yield
    finally:
        autoint.compile_autoint = original


@contextlib.contextmanager
def _one_gemm_projection():
    """Swap recpipe's InteractingLayer for a variant that projects Q, K, V and the
    residual with ONE matmul and slices the activations per head (same weights, same
    math): a probe of whether the per-head thin matmuls cost more than slicing."""
    from keras import ops

    import recpipe.models.autoint as autoint

    original = autoint.InteractingLayer

    class OneGemm(original):
        def call(self, inputs):
            width, hd = self.heads * self.head_dim, self.head_dim
            n_fields, d_in = inputs.shape[1], inputs.shape[-1]
            proj = ops.matmul(ops.reshape(inputs, (-1, d_in)), self.kernel)

            def part(col, size):
                return ops.reshape(proj[:, col:col + size], (-1, n_fields, size))

            heads = []
            for h in range(self.heads):
                q, k, v = part(h * hd, hd), part(width + h * hd, hd), part(2 * width + h * hd, hd)
                scores = ops.matmul(q, ops.transpose(k, (0, 2, 1)))
                if self.scaling:
                    scores = scores / float(np.sqrt(hd))
                heads.append(ops.matmul(ops.softmax(scores, axis=-1), v))
            out = ops.concatenate(heads, axis=-1)
            if self.use_res:
                out = out + part(3 * width, width)
            out = ops.relu(out)
            return self.norm(out) if self.norm is not None else out

    autoint.InteractingLayer = OneGemm
    try:
        yield
    finally:
        autoint.InteractingLayer = original


def profile(args) -> dict:
    """Variants of our GRU4Rec and AutoInt+ fits (and of the seeds) on subsets; rates are
    rates, so subsets keep this short. Wall and CPU-time rates are both recorded."""
    load_before = load_average()
    _, (ratings, movies, users) = load_data()
    train = _head_sessions(gru_train_events(ratings), args.profile_events)
    X, y, field_dims = autoint_rows(ratings, movies, users)
    X, y = X[:args.profile_rows], y[:args.profile_rows]
    result: dict = {"load_before": load_before, "gru4rec_events": int(len(train)), "autoint_rows": int(len(X)),
                    "epochs_each": 1}

    def run(group, name, fn, key):
        load = os.getloadavg()[0]
        out = result.setdefault(group, {})[name] = {**fn(), "load_1m_before": load}
        cpu_key = key.replace("_per_s", "_per_cpu_s")
        print(f"profile {group} {name}: {out[key]:,.0f}/s, {out[cpu_key]:,.0f}/CPU-s (load {load:.2f})", flush=True)

    gru = "gru4rec_variants"
    run(gru, "seed_loop", lambda: seed_gru(train, 600, 20), "events_per_s")
    run(gru, "ours_seed002_config", lambda: ours_gru(train, 1), "events_per_s")
    run(gru, "ours_bptt64", lambda: ours_gru(train, 1, bptt=64), "events_per_s")
    run(gru, "ours_lanes512", lambda: ours_gru(train, 1, batch_size=512), "events_per_s")
    run(gru, "ours_jit_compile", lambda: ours_gru(train, 1, jit_compile=True), "events_per_s")

    def spe():
        with _steps_per_execution(16):
            return ours_gru(train, 1)

    run(gru, "ours_steps_per_execution16", spe, "events_per_s")
    for intra, inter in ((1, 1), (2, 2)):
        run(gru, f"ours_threads_intra{intra}_inter{inter}",
            lambda: _gru_in_subprocess(intra, inter, 1, args.profile_events), "events_per_s")
    run(gru, "ours_seed002_config_again", lambda: ours_gru(train, 1), "events_per_s")
    result["seed002_step_breakdown"] = _seed_step_breakdown(train)
    print("seed step (ms):", {k: round(v, 2) for k, v in result["seed002_step_breakdown"]["ms_per_step"].items()})

    ai = "autoint_variants"
    run(ai, "seed_fit", lambda: seed_autoint(X, y, field_dims, 1), "samples_per_s")
    run(ai, "ours_seed000_config", lambda: ours_autoint(X, y, field_dims, 1), "samples_per_s")

    def no_auc():
        with _autoint_without_auc():
            return ours_autoint(X, y, field_dims, 1)

    run(ai, "ours_without_auc_metric", no_auc, "samples_per_s")
    run(ai, "ours_jit_compile", lambda: ours_autoint_jit(X, y, field_dims), "samples_per_s")

    def one_gemm():
        with _one_gemm_projection():
            return ours_autoint(X, y, field_dims, 1)

    run(ai, "ours_one_gemm_projection", one_gemm, "samples_per_s")
    run(ai, "ours_seed000_config_again", lambda: ours_autoint(X, y, field_dims, 1), "samples_per_s")

    def seed_trained_attention():
        from recpipe.features import FIELDS
        from seed_loops import seed000_fit

        return seed000_fit(X, y, field_dims, 1, columns=FIELDS, train_attention=True)

    run(ai, "seed_fit_attention_trained", seed_trained_attention, "samples_per_s")
    run(ai, "seed_fit_again", lambda: seed_autoint(X, y, field_dims, 1), "samples_per_s")
    result["load_after"] = load_average()
    return result


def ours_autoint_jit(X, y, field_dims) -> dict:
    from recpipe.models.autoint import SEED000_CONFIG, fit_autoint

    cpu = time.process_time()
    _, history = fit_autoint(X, y, field_dims, SEED000_CONFIG.with_(epochs=1, patience=1), verbose=0, jit_compile=True)
    cpu = time.process_time() - cpu
    rows = int(history["train_rows"] + history["val_rows"])
    return {"samples_per_s": history["samples_per_s"], "fit_seconds": history["fit_seconds"], "cpu_seconds": cpu,
            "samples_per_cpu_s": rows / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gru-steps", type=int, default=1500, help="timed steps of the seed GRU4Rec loop")
    parser.add_argument("--gru-warmup", type=int, default=20, help="untimed first steps of the seed loop")
    parser.add_argument("--gru-epochs", type=int, default=1, help="epochs of fit_gru4rec per round")
    parser.add_argument("--autoint-epochs", type=int, default=1, help="epochs of both AutoInt+ fits per round")
    parser.add_argument("--profile", action="store_true", help="profile variants instead; adds 'profile'")
    parser.add_argument("--profile-events", type=int, default=200_000, help="GRU4Rec train events when profiling")
    parser.add_argument("--profile-rows", type=int, default=200_000, help="AutoInt+ rows when profiling")
    args = parser.parse_args()
    path = RESULTS / f"{NAME}.json"
    started = time.perf_counter()
    if args.profile:
        payload = json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME}
        payload["profile"] = {**profile(args), "seconds": time.perf_counter() - started, "machine": machine()}
    else:
        previous = json.loads(path.read_text()).get("profile") if path.is_file() else None
        payload = {"benchmark": NAME, "machine": machine(), **compare(args), "seconds": time.perf_counter() - started}
        if previous is not None:
            payload["profile"] = previous  # measured by an earlier --profile run; it records its own load
        s = payload["summary"]
        for model, key in (("gru4rec", "events_per_s"), ("autoint", "samples_per_s")):
            m = s[model]
            print(f"{model}: ours {m['ours_' + key]:,.0f} vs seed {m['seed_' + key]:,.0f} {key.replace('_per_s', '')}/s"
                  f" -> {m['ratio']:.2f}x (goal {m['goal']:.0f}x: {'met' if m['goal_met'] else 'NOT met'});"
                  f" per CPU-second {m['ratio_cpu_time']:.2f}x")
    payload["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
