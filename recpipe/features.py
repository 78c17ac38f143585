"""The 14 categorical AutoInt+ fields, and their encoders fitted as of a time T.

`derive_fields` is the one place the fields are defined. It serves training rows (a
rating's own timestamp) and scoring candidates (the scoring date's timestamp) alike.
Times are UTC; seed 000 used Korean local time, the one deliberate difference.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sklearn.preprocessing import OrdinalEncoder

log = logging.getLogger(__name__)

USER_ITEM_FIELDS = ["user_id", "movie_id"]
META_FIELDS = [
    "movie_decade", "movie_year", "rating_year", "rating_month", "rating_decade",
    "genre1", "genre2", "genre3", "gender", "age", "occupation", "zip",
]
FIELDS = USER_ITEM_FIELDS + META_FIELDS  # model input order
# Who owns each field: scoring encodes user fields once per user, item fields once per
# movie and context fields once per scoring time, then adds the codes of the three.
USER_FIELDS = ["user_id", "gender", "age", "occupation", "zip"]
ITEM_FIELDS = ["movie_id", "movie_decade", "movie_year", "genre1", "genre2", "genre3"]
CONTEXT_FIELDS = ["rating_year", "rating_month", "rating_decade"]
assert sorted(USER_FIELDS + ITEM_FIELDS + CONTEXT_FIELDS) == sorted(FIELDS)
UNKNOWN = 0  # code reserved for values not seen before T, and for missing values
NO_GENRE = "no"  # seed 000's filler for movies with fewer than three genres
POSITIVE_MIN_RATING = 4  # label = rating >= 4


def _as_str(values: pd.Series) -> pd.Series:
    """Integers (possibly missing) as strings; missing stays missing (-> UNKNOWN)."""
    out = values.astype("Int64").astype("string")
    return out.astype(object).where(out.notna(), None)


def movie_fields(movies: pd.DataFrame) -> pd.DataFrame:
    """movie_id -> movie_decade, movie_year, genre1..3 (one row per movie)."""
    year = movies["year"].astype("Int64")
    # Genres NULL (a source without them): unknown, not "no genre".
    genres = movies["genres"].apply(
        lambda g: [None] * 3 if g is None else list(g)[:3] + [NO_GENRE] * (3 - len(list(g)[:3])))
    out = pd.DataFrame({"movie_id": movies["movie_id"].astype("int64")})
    out["movie_decade"] = _as_str(year // 10 * 10).map(lambda v: None if v is None else f"{v}s")
    out["movie_year"] = _as_str(year)
    for i in range(3):
        out[f"genre{i + 1}"] = genres.str[i]
    return out


def user_fields(users: pd.DataFrame) -> pd.DataFrame:
    """user_id -> gender, age, occupation, zip (one row per user)."""
    return pd.DataFrame(
        {
            "user_id": users["user_id"].astype("int64"),
            "gender": users["gender"].astype(object),
            "age": _as_str(users["age"]),
            "occupation": _as_str(users["occupation"]),
            "zip": users["zip"].astype(object),
        }
    )


def time_fields(rated_at: pd.Series) -> pd.DataFrame:
    """rating_year, rating_month, rating_decade of UTC timestamps."""
    ts = pd.to_datetime(rated_at, utc=True)
    year = ts.dt.year
    return pd.DataFrame(
        {
            "rating_year": year.astype(str).to_numpy(dtype=object),
            "rating_month": ts.dt.month.astype(str).to_numpy(dtype=object),
            "rating_decade": (year // 10 * 10).astype(str).add("s").to_numpy(dtype=object),
        },
        index=rated_at.index,
    )


def derive_fields(events: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """The 14 fields (as strings, None when unknown) for rows of (user_id, movie_id, rated_at).

    `events` may carry `rating`; then `label` (1.0 when rating >= 4) is added. Unknown
    users or movies give missing fields instead of dropping the row.
    """
    base = pd.DataFrame(
        {"user_id": events["user_id"].to_numpy("int64"), "movie_id": events["movie_id"].to_numpy("int64")}
    )
    out = base.merge(movie_fields(movies), on="movie_id", how="left").merge(
        user_fields(users), on="user_id", how="left"
    )
    times = time_fields(pd.Series(events["rated_at"].to_numpy(), index=out.index))
    out = pd.concat([out, times], axis=1)
    out["user_id"] = base["user_id"].astype(str).to_numpy(dtype=object)
    out["movie_id"] = base["movie_id"].astype(str).to_numpy(dtype=object)
    result = out[FIELDS].astype(object)
    result = result.where(result.notna(), None)
    if "rating" in events:
        result["label"] = (events["rating"].to_numpy() >= POSITIVE_MIN_RATING).astype("float32")
    return result


def _owned_codes(encoders: "FieldEncoders", partial: pd.DataFrame, owned: list[str]) -> np.ndarray:
    """Codes of the `owned` fields of `partial` (every other field 0), in the encoders' field order."""
    frame = pd.DataFrame({name: partial[name] if name in owned else None for name in FIELDS}, index=partial.index)
    codes = encoders.transform(frame)
    codes[:, [name not in owned for name in encoders.fields]] = 0
    return codes


def user_codes(encoders: "FieldEncoders", user_ids: np.ndarray, users: pd.DataFrame) -> np.ndarray:
    """The user-owned field codes of each id (other fields 0); ids not in `users` keep
    their id and get UNKNOWN attributes, as in derive_fields."""
    ids = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64)})
    frame = ids.merge(user_fields(users.drop_duplicates("user_id")), on="user_id", how="left")
    frame["user_id"] = ids["user_id"].astype(str).to_numpy(dtype=object)
    return _owned_codes(encoders, frame, USER_FIELDS)


def movie_codes(encoders: "FieldEncoders", movie_ids: np.ndarray, movies: pd.DataFrame) -> np.ndarray:
    """The item-owned field codes of each id (other fields 0)."""
    ids = pd.DataFrame({"movie_id": np.asarray(movie_ids, dtype=np.int64)})
    frame = ids.merge(movie_fields(movies.drop_duplicates("movie_id")), on="movie_id", how="left")
    frame["movie_id"] = ids["movie_id"].astype(str).to_numpy(dtype=object)
    return _owned_codes(encoders, frame, ITEM_FIELDS)


def context_codes(encoders: "FieldEncoders", rated_at: pd.Series) -> np.ndarray:
    """The rating-time field codes of each timestamp (other fields 0)."""
    return _owned_codes(encoders, time_fields(rated_at.reset_index(drop=True)), CONTEXT_FIELDS)


def encode_events(encoders: "FieldEncoders", events: pd.DataFrame, movies: pd.DataFrame, users: pd.DataFrame,
                  chunk_rows: int = 1 << 22) -> np.ndarray:
    """encoders.transform(derive_fields(events, movies, users)) without a string per row
    and field: every field is owned by the user, the movie or the UTC month, so each
    distinct one is encoded once and a row's codes are the sum of its three. Memory is
    the int32 output plus `chunk_rows` rows at a time (50M rows x 14 fields: 2.8 GB,
    against ~12 GiB of per-row strings)."""
    def positions(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, uniques = pd.factorize(values)
        return pos.astype(np.int32), uniques  # half the memory of factorize's int64

    user_pos, user_ids = positions(events["user_id"].to_numpy(np.int64))
    movie_pos, movie_ids = positions(events["movie_id"].to_numpy(np.int64))
    rated_at = pd.to_datetime(events["rated_at"], utc=True)
    month_pos, month_starts = positions(rated_at.dt.tz_localize(None).to_numpy().astype("datetime64[M]"))
    del rated_at
    by_user = user_codes(encoders, user_ids, users)
    by_movie = movie_codes(encoders, movie_ids, movies)
    by_month = context_codes(encoders, pd.Series(pd.to_datetime(month_starts).tz_localize("UTC")))
    out = np.empty((len(events), len(encoders.fields)), dtype=np.int32)
    for start in range(0, len(events), chunk_rows):
        rows = slice(start, start + chunk_rows)
        out[rows] = by_user[user_pos[rows]]
        out[rows] += by_movie[movie_pos[rows]]
        out[rows] += by_month[month_pos[rows]]
    return out


@dataclass
class FieldEncoders:
    """One vocabulary per field; code 0 is unknown/missing, known values are 1..n.

    `fields`: the fields the model uses, in FIELDS order: fit() keeps the ids, the
    context fields and every attribute field with at least one value, so a source
    without user attributes (ML-25M) trains on ids, item and context fields only.
    """

    as_of: datetime | None = None
    encoder: OrdinalEncoder = field(
        default_factory=lambda: OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1, dtype=np.int64
        )
    )
    rows_fitted: int = 0
    fields: tuple[str, ...] = tuple(FIELDS)  # encoders pickled before this attribute used all 14

    def fit(self, frame: pd.DataFrame) -> "FieldEncoders":
        # Missing values are not a category: they encode to UNKNOWN like unseen ones.
        always = set(USER_ITEM_FIELDS + CONTEXT_FIELDS)
        self.fields = tuple(name for name in FIELDS if name in always or frame[name].notna().any())
        categories = [sorted(frame[name].dropna().unique()) for name in self.fields]
        self.encoder.set_params(categories=[np.asarray(c, dtype=object) for c in categories])
        self.encoder.fit(frame[list(self.fields)].head(1).fillna(np.nan))
        self.rows_fitted = len(frame)
        return self

    @property
    def unused_fields(self) -> list[str]:
        """Fields without any value before as_of (the source does not have them)."""
        return [name for name in FIELDS if name not in self.fields]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """int32 codes of shape (n, len(fields)) in `fields` order."""
        codes = self.encoder.transform(frame[list(self.fields)].fillna(np.nan))
        return (codes + 1).astype(np.int32)

    @property
    def vocabularies(self) -> dict[str, list[str]]:
        return {name: list(cats) for name, cats in zip(self.fields, self.encoder.categories_)}

    @property
    def field_dims(self) -> list[int]:
        """Vocabulary size of each field plus the reserved unknown slot."""
        return [len(cats) + 1 for cats in self.encoder.categories_]


ENCODINGS_KIND = "encodings"
ENCODERS_FILE = "encoders.joblib"


def rated_keys(engine, before: datetime) -> tuple[pd.DataFrame, int]:
    """(events, number of ratings): rows of (user_id, movie_id, rated_at) holding every
    distinct user, movie and UTC month rated before `before` at least once (the shorter
    lists repeat). Each field is a function of one of the three, so encoders fitted on
    these rows see exactly the values of all the ratings' rows, at a size of
    max(users, movies, months) instead of one row per rating (25M rows: ~12 GiB)."""
    from recpipe.db import statement

    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(statement("encoder_keys"), {"before": before}).all(),
                            columns=["grouped", "user_id", "movie_id", "month", "ratings"])
    total = int(rows.loc[rows["grouped"] == 7, "ratings"].sum())
    parts = [rows.loc[rows["grouped"] == g, name].to_numpy("int64")
             for g, name in ((3, "user_id"), (5, "movie_id"), (6, "month"))]
    size = max(map(len, parts)) if total else 0
    users, movies, months = (np.resize(part, size) for part in parts)
    return pd.DataFrame({"user_id": users, "movie_id": movies,
                         "rated_at": pd.to_datetime(months, unit="s", utc=True)}), total


def build_encodings(engine, settings, fitted_before: datetime):
    """Fit the field encoders on the ratings before `fitted_before`; persist and register them.

    Returns the registered `Artifact` (details carry field_dims and the fields).
    """
    import joblib

    from recpipe import artifacts
    from recpipe.db import read_movies, read_users

    keys, n_ratings = rated_keys(engine, fitted_before)
    if n_ratings == 0:
        raise ValueError(f"no ratings before {fitted_before:%Y-%m-%d %H:%M}Z: ingest first")
    encoders = FieldEncoders(as_of=fitted_before).fit(derive_fields(keys, read_movies(engine), read_users(engine)))
    encoders.rows_fitted = n_ratings
    if encoders.unused_fields:
        log.info("encodings before %s: fields %s have no values in the source, unused; model fields: %s",
                 fitted_before, ", ".join(encoders.unused_fields), ", ".join(encoders.fields))
    folder = artifacts.new_dir(settings, ENCODINGS_KIND, fitted_before)
    joblib.dump(encoders, folder / ENCODERS_FILE)
    return artifacts.register(
        engine, settings, ENCODINGS_KIND, fitted_before, folder,
        row_counts={"ratings": n_ratings},
        details={"field_dims": encoders.field_dims, "fields": list(encoders.fields),
                 "unused_fields": encoders.unused_fields},
    )


def load_encodings(engine, settings, artifact_id: int) -> FieldEncoders:
    """The encoders of an artifact, loaded from its verified bytes only."""
    import joblib

    from recpipe import artifacts

    artifact = artifacts.get(engine, settings, artifact_id)
    if artifact.kind != ENCODINGS_KIND:
        raise artifacts.ArtifactIntegrityError(f"artifact {artifact_id} is {artifact.kind!r}, not encodings")
    with artifacts.open_artifact(settings, artifact) as bundle:
        encoders = joblib.load(bundle.path(ENCODERS_FILE))
    if not isinstance(encoders, FieldEncoders):
        raise artifacts.ArtifactIntegrityError(f"artifact {artifact_id} is not a FieldEncoders")
    return encoders
