"""Training-data preparation for the production models."""
from __future__ import annotations

import numpy as np
import pytest
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


def test_encode_events_equals_the_per_row_fields():
    """encode_events (each user, movie and month encoded once, codes summed) gives the
    codes of derive_fields row by row: unknown ids, missing attributes, values unseen
    by the encoders and months across years included."""
    from recpipe.features import FieldEncoders, derive_fields, encode_events

    rng = np.random.default_rng(3)
    movies = pd.DataFrame({"movie_id": [1, 2, 3, 4], "title": list("abcd"), "year": [1995, None, 1987, 2001],
                           "genres": [["Drama"], ["Comedy", "Drama"], None, ["Action", "War", "Drama", "Crime"]]})
    users = pd.DataFrame({"user_id": [1, 2, 3], "gender": ["M", None, "F"], "age": [25, 35, None],
                          "occupation": [1, None, 3], "zip": ["111", "222", None]})
    n = 500
    events = pd.DataFrame({"user_id": rng.integers(1, 6, n), "movie_id": rng.integers(1, 7, n),
                           "rated_at": pd.to_datetime(rng.integers(9.0e8, 1.1e9, n), unit="s", utc=True)})
    encoders = FieldEncoders().fit(derive_fields(events.iloc[: n // 3], movies.iloc[:3], users.iloc[:2]))
    expected = encoders.transform(derive_fields(events, movies, users))
    got = encode_events(encoders, events, movies, users, chunk_rows=7)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert (expected == 0).any() and (expected > 0).any()


def test_autoint_ranks_its_most_rated_movies_when_the_catalogue_is_over_its_limit():
    from recpipe.recommenders.autoint import RECOMMENDER, ranked_movies

    movies = pd.DataFrame({"movie_id": [1, 2, 3, 4, 5], "title": list("abcde")})
    ratings = pd.DataFrame({"movie_id": [4, 4, 4, 2, 2, 5, 5, 1]})
    assert ranked_movies(movies, ratings, 5) is movies  # within the limit: the whole catalogue
    assert ranked_movies(movies, ratings, 3)["movie_id"].tolist() == [2, 4, 5]  # 2 and 5 tie: both in
    assert ranked_movies(movies, ratings, 2)["movie_id"].tolist() == [2, 4]  # the tie goes to the lower id
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="catalogue_limit"):
            RECOMMENDER.make_config({"catalogue_limit": bad}, None)
