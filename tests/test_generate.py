"""recpipe.generate: deterministic, well-formed, realistic-shaped data in three layouts."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from recpipe.generate import Spec, format_rows, main, write
from recpipe.source import parse_movies, parse_ratings, parse_users

SMALL = Spec(ratings=200_000, users=2_000, items=2_000, seed=3)
# More users per item, so the top 1 % of items is not capped by the number of users.
SKEWED = Spec(ratings=400_000, users=16_000, items=2_000, seed=5)


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    out = tmp_path_factory.mktemp("generic")
    write(out, SMALL, "generic")
    return out


@pytest.fixture(scope="module")
def ratings(generic) -> pd.DataFrame:
    return pd.read_csv(generic / "ratings.csv")


def test_same_seed_same_bytes_other_seed_other_data(generic, tmp_path):
    write(tmp_path / "again", SMALL, "generic")
    assert _digest(tmp_path / "again") == _digest(generic)
    write(tmp_path / "other", Spec(**{**SMALL.__dict__, "seed": 4}), "generic")
    assert _digest(tmp_path / "other")["ratings.csv"] != _digest(generic)["ratings.csv"]


def test_generic_layout(generic, ratings):
    assert sorted(p.name for p in generic.iterdir()) == ["items.csv", "ratings.csv", "users.csv"]
    assert (generic / "ratings.csv").read_text().split("\n", 1)[0] == "user_id,item_id,rating,timestamp"
    assert len(ratings) == SMALL.ratings
    assert ratings["user_id"].between(1, SMALL.n_users).all() and ratings["item_id"].between(1, SMALL.n_items).all()
    assert set(ratings["rating"].unique()) == {1, 2, 3, 4, 5}
    assert ratings["timestamp"].between(SMALL.start_ts, SMALL.end_ts - 1).all()
    items = pd.read_csv(generic / "items.csv")
    assert list(items.columns) == ["item_id", "title", "genres"] and len(items) == SMALL.n_items
    assert items["title"].str.contains(r"\(\d{4}\)$").all()
    n_genres = items["genres"].str.split("|").str.len()
    assert n_genres.between(1, 3).all() and n_genres.max() == 3
    users = pd.read_csv(generic / "users.csv", dtype={"zip": str})
    assert list(users.columns) == ["user_id", "gender", "age", "occupation", "zip"] and len(users) == SMALL.n_users
    assert set(users["gender"]) == {"M", "F"} and users["zip"].str.fullmatch(r"\d{5}").all()
    # MovieLens order: by user, then time.
    key = ratings["user_id"].to_numpy() * 2**32 + ratings["timestamp"].to_numpy()
    assert (np.diff(key) >= 0).all()


def test_each_user_item_pair_once(ratings):
    assert not ratings.duplicated(["user_id", "item_id"]).any()


def test_item_popularity_is_heavy_tailed(tmp_path):
    write(tmp_path, SKEWED, "generic", users_file=False)
    r = pd.read_csv(tmp_path / "ratings.csv")
    per_item = np.sort(r["item_id"].value_counts().to_numpy())[::-1]
    top = max(1, SKEWED.n_items // 100)
    assert per_item[:top].sum() / len(r) > 0.15
    assert not (tmp_path / "users.csv").exists()


def test_user_activity_is_heavy_tailed(ratings):
    per_user = ratings["user_id"].value_counts()
    assert per_user.min() >= 20 and per_user.max() > 8 * per_user.median()


def test_items_and_users_arrive_over_the_span(ratings):
    span = SMALL.end_ts - SMALL.start_ts
    first_item = ratings.groupby("item_id")["timestamp"].min()
    # Item ids follow release order: later items are first rated later.
    assert first_item.rank().corr(pd.Series(first_item.index, index=first_item.index).rank()) > 0.8
    assert ((first_item - SMALL.start_ts) > span / 2).mean() > 0.25
    first_user = ratings.groupby("user_id")["timestamp"].min()
    assert np.histogram(first_user, bins=4, range=(SMALL.start_ts, SMALL.end_ts))[0].min() > SMALL.n_users / 8


def test_ratings_come_in_sessions(ratings):
    same_user = ratings["user_id"].to_numpy()[1:] == ratings["user_id"].to_numpy()[:-1]
    gaps = np.diff(ratings["timestamp"].to_numpy())[same_user]
    assert (gaps <= 300).mean() > 0.6  # most ratings follow the previous one within minutes
    assert (gaps >= 86_400).mean() > 0.02  # and sessions are days apart


def test_ratings_carry_user_item_and_genre_signal(generic, ratings):
    rng = np.random.default_rng(0)
    half = rng.random(len(ratings)) < 0.5
    a, b = ratings[half], ratings[~half]
    for col in ("user_id", "item_id"):  # a user's / item's mean rating repeats across random halves
        means = pd.concat([a.groupby(col)["rating"].mean(), b.groupby(col)["rating"].mean()], axis=1).dropna()
        assert means.corr().iloc[0, 1] > 0.3
    items = pd.read_csv(generic / "items.csv")
    main_genre = items.set_index("item_id")["genres"].str.split("|").str[0]  # listed first
    r = ratings.assign(genre=main_genre.reindex(ratings["item_id"]).to_numpy())
    # A user's favourite genre: the one they rate most often relative to everybody's mix.
    lift = (r.groupby(["user_id", "genre"]).size() / r.groupby("user_id").size()) / r["genre"].value_counts(normalize=True)
    favourite = lift.groupby(level=0).idxmax().map(lambda k: k[1])
    is_fav = r["genre"].to_numpy() == favourite.reindex(r["user_id"]).to_numpy()
    assert r.loc[is_fav, "rating"].mean() > r.loc[~is_fav, "rating"].mean() + 0.1


def test_ml25m_layout(tmp_path):
    spec = Spec(ratings=50_000, users=400, items=2_000, seed=1)
    write(tmp_path, spec, "ml-25m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movies.csv", "ratings.csv"]
    r = pd.read_csv(tmp_path / "ratings.csv")
    assert list(r.columns) == ["userId", "movieId", "rating", "timestamp"] and len(r) == spec.ratings
    assert set(r["rating"].unique()) <= {x / 2 for x in range(1, 11)} and (r["rating"] % 1 == 0.5).any()
    movies = pd.read_csv(tmp_path / "movies.csv")
    assert list(movies.columns) == ["movieId", "title", "genres"] and len(movies) == spec.n_items
    assert movies["title"].str.contains(", The (", regex=False).any()  # quoted commas survive


def test_ml1m_layout_parses_without_rejections(tmp_path):
    spec = Spec(ratings=60_000, users=500, items=2_000, seed=2)
    write(tmp_path, spec, "ml-1m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movies.dat", "ratings.dat", "users.dat"]
    parsed = {name: fn(tmp_path / name) for name, fn in
              [("ratings.dat", parse_ratings), ("users.dat", parse_users), ("movies.dat", parse_movies)]}
    assert {name: len(p.rejected) for name, p in parsed.items()} == dict.fromkeys(parsed, 0)
    assert len(parsed["ratings.dat"].rows) == spec.ratings
    assert len(parsed["users.dat"].rows) == spec.n_users and len(parsed["movies.dat"].rows) == spec.n_items
    assert parsed["movies.dat"].rows["year"].notna().all()


def test_format_rows_matches_pandas():
    rng = np.random.default_rng(0)
    cols = {"a": np.r_[0, 9, 10, 99, 100, rng.integers(0, 10**6, 500)],
            "b": np.r_[2**32 + 5, 1, 0, 7, 123456789012, rng.integers(0, 10**3, 500)],
            "c": np.r_[1, 2, 9, 10, 5, rng.integers(1, 11, 500)]}
    frame = pd.DataFrame({"a": cols["a"], "b": cols["b"], "c": cols["c"] / 2})
    expected = frame.to_csv(index=False, header=False).encode()
    assert format_rows([("int", cols["a"]), ("int", cols["b"]), ("half", cols["c"])], b",") == expected
    assert format_rows([("int", np.array([5, 12]))], b"::") == b"5\n12\n"
    with pytest.raises(ValueError):
        format_rows([("int", np.array([-1]))], b",")


def test_cli_reports_rows_per_second_and_refuses_impossible_sizes(tmp_path, capsys):
    assert main(["--ratings", "20000", "--users", "200", "--out", str(tmp_path / "a")]) == 0
    assert "rows/s" in capsys.readouterr().out
    assert main(["--ratings", "100000", "--users", "10", "--items", "100", "--out", str(tmp_path / "b")]) == 2
    assert "do not fit" in capsys.readouterr().err
