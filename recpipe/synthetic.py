"""Small generated data in MovieLens-1M's file format, with patterns a model can learn.

Used by the tests (and by anyone without ML-1M). Planted structure:
- each user prefers one genre: ratings of that genre are high (label 1), others low;
- users alternate between movies of their genre, taken in a fixed chain order
  (GRU4Rec's signal), and movies of other genres;
- sessions: a user rates a few movies minutes apart, then pauses for days.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
START = datetime(2000, 4, 25, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SyntheticSpec:
    users: int = 120
    movies: int = 90
    ratings_per_user: int = 30
    days: int = 300
    seed: int = 7


def write_movielens(dest: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write ratings.dat, movies.dat, users.dat into dest; returns dest."""
    rng = np.random.default_rng(spec.seed)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    movie_genre = np.arange(spec.movies) % len(GENRES)
    with open(dest / "movies.dat", "w", encoding="latin-1", newline="\n") as fh:
        for m in range(spec.movies):
            second = GENRES[(movie_genre[m] + 1 + m // len(GENRES)) % len(GENRES)]
            genres = GENRES[movie_genre[m]] + ("|" + second if m % 3 else "")
            year = 1950 + (m * 7) % 51
            fh.write(f"{m + 1}::Movie {m + 1} ({year})::{genres}\n")
    user_genre = rng.integers(0, len(GENRES), spec.users)
    with open(dest / "users.dat", "w", encoding="latin-1", newline="\n") as fh:
        for u in range(spec.users):
            gender = "MF"[u % 2]
            age = [1, 18, 25, 35, 45, 50, 56][u % 7]
            fh.write(f"{u + 1}::{gender}::{age}::{u % 21}::{10000 + (u * 37) % 500:05d}\n")
    start_s = int(START.timestamp())
    span_s = spec.days * 86_400
    lines = []
    for u in range(spec.users):
        own = np.flatnonzero(movie_genre == user_genre[u])
        other = np.flatnonzero(movie_genre != user_genre[u])
        # Chain order through the user's genre, from a random starting point.
        first = rng.integers(len(own))
        chain = list(np.roll(own, -first))
        n_own = min(len(chain), spec.ratings_per_user // 2)
        picks = chain[:n_own] + list(rng.choice(other, spec.ratings_per_user - n_own, replace=False))
        t = start_s + int(rng.integers(0, span_s * 2 // 3))
        own_iter, other_iter = iter(picks[:n_own]), iter(picks[n_own:])
        for i in range(spec.ratings_per_user):
            take_own = i % 2 == 0  # own and other genres alternate all along
            movie = next(own_iter, None) if take_own else next(other_iter, None)
            if movie is None:
                movie = next(other_iter, None) if take_own else next(own_iter, None)
            is_own = movie_genre[movie] == user_genre[u]
            rating = int(rng.choice([4, 5])) if is_own else int(rng.choice([1, 2, 3]))
            lines.append((t, f"{u + 1}::{movie + 1}::{rating}::{t}\n"))
            # Minutes apart within a session; a session of five, then days of pause.
            t += int(rng.integers(60, 600)) if i % 5 != 4 else int(rng.integers(3, 30)) * 86_400
    # MovieLens orders the file by user; keep that.
    with open(dest / "ratings.dat", "w", encoding="latin-1", newline="\n") as fh:
        fh.writelines(line for _, line in lines)
    return dest
