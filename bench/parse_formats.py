"""Parse throughput of the CSV ratings reader against the ML-1M .dat reader, on the same rows.

ML-1M's ratings.dat (or --rows generated ones when ML-1M is absent) is rewritten as
ratings.csv twice: whole stars (generic, "4") and ML-25M style ("4.0"). Each file is
parsed --repeat times, the readers interleaved; best time of each, rows per second and
the CSV/.dat ratio of the throughputs are printed and written to bench/results.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import ML1M, load_average, write_result
from recpipe import formats, generate
from recpipe.source import parse_ratings


def same_rows(folder: Path, rows: int) -> Path:
    """ratings.dat: ML-1M's when present, else `rows` generated ones."""
    if (ML1M / "ratings.dat").is_file():
        return ML1M / "ratings.dat"
    generate.write(folder / "gen", generate.Spec(ratings=rows), "ml-1m")
    return folder / "gen" / "ratings.dat"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000, help="generated rows when ML-1M is absent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dat = same_rows(tmp, args.rows)
        rows = parse_ratings(dat).rows
        body = rows[["user_id", "movie_id", "rating", "ts"]]
        generic, ml25 = tmp / "generic.csv", tmp / "ml25m.csv"
        body.to_csv(generic, index=False, header=formats.GENERIC_RATINGS_HEADER.split(","))
        body.assign(rating=body["rating"].map("{:.1f}".format)).to_csv(
            ml25, index=False, header=formats.ML_RATINGS_HEADER.split(","))
        readers = {
            ".dat": lambda: parse_ratings(dat),
            "csv generic": lambda: formats.parse_csv_ratings(generic, formats.GENERIC_RATINGS_HEADER),
            "csv ml-25m": lambda: formats.parse_csv_ratings(ml25, formats.ML_RATINGS_HEADER),
        }
        best = {name: float("inf") for name in readers}
        for _ in range(args.repeat):
            for name, read in readers.items():
                started = time.perf_counter()
                parsed = read()
                best[name] = min(best[name], time.perf_counter() - started)
                assert len(parsed.rows) == len(rows) and parsed.rejected.empty, name
    n = len(rows)
    result = {"rows": n, "source": str(dat), "repeat": args.repeat, **load_average(),
              "seconds": best, "rows_per_s": {k: n / v for k, v in best.items()},
              "ratio_csv_generic_to_dat": best[".dat"] / best["csv generic"],
              "ratio_csv_ml25m_to_dat": best[".dat"] / best["csv ml-25m"]}
    for name, seconds in best.items():
        print(f"{name:>12}: {seconds:.3f} s  {n / seconds / 1e6:.2f} M rows/s")
    print(f"throughput CSV/.dat: generic {result['ratio_csv_generic_to_dat']:.2f},"
          f" ml-25m {result['ratio_csv_ml25m_to_dat']:.2f} ({n} rows, best of {args.repeat})")
    write_result("parse_formats", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
