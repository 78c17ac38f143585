"""A baseline's nightly choice on a validation window against the fit it replaced, side
by side in one run (`--model itemknn|ease`).

item-kNN (neighbours x shrinkage): the reference is the earlier fit (in this file,
verbatim in substance): one fit per candidate, each computing the co-occurrence product
again and fully sorting every column of the similarity. recpipe fits all candidates at
once (fit_many: one product per block, one selection per shrinkage, a partition before
the sort).

EASE (lambda): the reference is the earlier fit: per candidate, the Gram matrix again and
a general float64 inverse. recpipe shares one Gram matrix across the candidates and
inverts through a float32 Cholesky factor in place (fit_many).

Both sides choose among the nightly defaults (the model's DEFAULTS: candidates and item
budget) on the same split of generated data (`--ratings`, the last 3% of the time span
validates), alternating over `--rounds`; the choices must agree, and the NDCG@10 of
every candidate within 1e-3 (EASE's float32 moves ties).

    python bench/choice.py [--model itemknn] [--ratings 5000000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from _common import load_average, matmul_gflops, write_result
from recpipe.generate import Spec, write
from recpipe.models import ease, itemknn
from recpipe.models.ease import choose, positives_matrix


def reference_fit(interactions, config: itemknn.ItemKNNConfig, block: int = 1024) -> itemknn.ItemKNNModel:
    x, movie_ids = positives_matrix(interactions, config.min_rating, config.max_items)
    xc = x.tocsc()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
    n = len(movie_ids)
    keep = min(config.neighbours, max(n - 1, 0))
    rows, cols, vals = [], [], []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        co = (x.T @ xc[:, lo:hi]).toarray()
        sim = co / (norms[:, None] * norms[None, lo:hi] + config.shrinkage + 1e-12)
        sim[np.arange(lo, hi), np.arange(hi - lo)] = 0.0
        if keep == 0:
            continue
        top = np.argsort(-sim, axis=0, kind="stable")[:keep]
        v = np.take_along_axis(sim, top, axis=0)
        nz = v > 0
        rows.append(top[nz])
        cols.append(np.broadcast_to(np.arange(lo, hi), top.shape)[nz])
        vals.append(v[nz])
    w = sp.csr_matrix((np.concatenate(vals).astype(np.float32),
                       (np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64))), shape=(n, n))
    return itemknn.ItemKNNModel(w, movie_ids, config)


def reference_ease_fit(interactions, config: ease.EASEConfig) -> ease.EASEModel:
    x, movie_ids = positives_matrix(interactions, config.min_rating, config.max_items)
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += config.lambda_
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return ease.EASEModel(b.astype(np.float32), movie_ids, config)


def sides_for(model: str, train, validation) -> dict:
    if model == "itemknn":
        from recpipe.recommenders.itemknn import RECOMMENDER
        candidates = RECOMMENDER.candidates(RECOMMENDER.make_config(None, None))
        return {"reference": lambda: choose(((c, reference_fit(train, c)) for c in candidates), train, validation),
                "recpipe": lambda: itemknn.choose_config(train, validation, candidates)}
    from recpipe.recommenders.ease import RECOMMENDER
    candidates = RECOMMENDER.candidates(RECOMMENDER.make_config(None, None))
    return {"reference": lambda: choose(((c, reference_ease_fit(train, c)) for c in candidates), train, validation),
            "recpipe": lambda: choose(zip(candidates, ease.fit_many(train, candidates)), train, validation)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("itemknn", "ease"), default="itemknn")
    parser.add_argument("--ratings", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        gen = write(Path(tmp), Spec(ratings=args.ratings, seed=0), "generic")
        df = pd.read_csv(Path(tmp) / "ratings.csv").rename(columns={"item_id": "movie_id", "timestamp": "ts"})
    df["rating"] = df["rating"].round().astype(int).clip(1, 5)
    cut = df["ts"].quantile(0.97)
    train, validation = df[df["ts"] < cut], df[df["ts"] >= cut]
    validation = validation[validation["user_id"].isin(train["user_id"].unique())]
    sides = sides_for(args.model, train, validation)
    result = {"probe_before": matmul_gflops(), "load_before": load_average(), "model": args.model,
              "ratings": args.ratings, "items": gen["items"], "users": gen["users"], "runs": []}
    for round_no in range(args.rounds):
        for side in list(sides) if round_no % 2 == 0 else list(sides)[::-1]:
            started = time.perf_counter()
            _, chosen, log = sides[side]()
            run = {"side": side, "seconds": round(time.perf_counter() - started, 2),
                   "chosen": chosen.__dict__, "ndcg@10": [round(entry["ndcg@10"], 6) for entry in log]}
            print(run, flush=True)
            result["runs"].append(run)
    result["probe_after"], result["load_after"] = matmul_gflops(), load_average()
    best = {side: min(r["seconds"] for r in result["runs"] if r["side"] == side) for side in sides}
    result["best_seconds"] = best
    result["reference_over_recpipe"] = round(best["reference"] / best["recpipe"], 2)
    result["same_choice"] = len({str(r["chosen"]) for r in result["runs"]}) == 1
    result["ndcg_max_difference"] = float(np.ptp([r["ndcg@10"] for r in result["runs"]], axis=0).max())
    print(f"reference / recpipe: {result['reference_over_recpipe']}x; same choice: {result['same_choice']}; "
          f"NDCG@10 differs by at most {result['ndcg_max_difference']:.2g}")
    write_result(f"{args.model}_choice", result)


if __name__ == "__main__":
    main()
