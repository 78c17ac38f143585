"""Training-data preparation for the production models."""
from __future__ import annotations

import numpy as np
import pandas as pd

from recpipe.recommenders.autoint import with_sampled_negatives


def test_sampled_negatives_are_unrated_movies_at_the_rating_time():
    rng = np.random.default_rng(0)
    n = 400
    ratings = pd.DataFrame({
        "user_id": rng.integers(1, 20, n), "movie_id": rng.integers(1, 30, n), "rating": rng.integers(1, 6, n),
        "ts": np.sort(rng.integers(0, 10**6, n)), "line_no": np.arange(1, n + 1),
    }).drop_duplicates(["user_id", "movie_id"])
    ratings["rated_at"] = pd.to_datetime(ratings["ts"], unit="s", utc=True)
    out = with_sampled_negatives(ratings, np.arange(1, 40), per_rating=2, seed=1)
    negatives = out[out["rating"] == 0]
    assert len(out) == len(ratings) + len(negatives)
    assert len(negatives) >= 2 * len(ratings) * 0.99  # clashes are re-drawn, rarely dropped
    rated = set(zip(ratings.user_id, ratings.movie_id))
    assert not any((u, m) in rated for u, m in zip(negatives.user_id, negatives.movie_id))
    assert out["ts"].is_monotonic_increasing  # validation (the last rows) stays the latest
    assert with_sampled_negatives(ratings, np.arange(1, 40), 0, 1)["rating"].min() >= 1
