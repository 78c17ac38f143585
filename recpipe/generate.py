"""Realistic rating data at any size, ML-25M-shaped by default, written fast.

    python -m recpipe.generate --ratings 25000000 --out DIR [--seed 0] [--format generic|ml-25m|ml-1m]

What is planted (so that models have something to learn, and pipelines something
realistic to chew on):
- catalogue growth: a back catalogue exists on the first day; the other items are
  released over the span, more of them in later years. Item ids follow release order.
  Titles carry "(year)"; each item has 1-3 genres from a fixed list.
- users join over the span (user ids follow join order) and rate in bursts: an
  onboarding session of 10+ ratings, then sessions of a few ratings seconds to minutes
  apart, separated by gaps of hours to months (log-normal, median two days).
- power laws: item popularity is Zipf-like, user activity Pareto-like (at least 20
  ratings each, capped at half of what the catalogue holds when the user joins).
- what a user rates: each session has a genre drawn from the user's (concentrated)
  genre taste; most of its ratings are popularity-weighted picks of that genre, the
  rest popularity-weighted picks from everything; a share favours recent releases.
  Nobody rates an item before its release, and each (user, item) pair occurs once.
- ratings: mean + user bias + item bias (popular items rate higher) + user x item
  affinity (latent factors built from genre tastes) + noise, rounded to stars
  (half stars for ml-25m).

Speed: everything is vectorised numpy, one chunk of users at a time (a chunk holds
about `CHUNK_RATINGS` ratings, so memory stays flat at any size); numbers are turned
into CSV bytes by digit arithmetic on a byte matrix (no per-row Python, no pandas
writer on the big file). Each chunk has its own random stream derived from the seed,
so the same seed gives byte-identical files.

Formats:
- generic: ratings.csv (user_id,item_id,rating,timestamp; Unix seconds; stars 1-5),
  items.csv (item_id,title,genres with `|`), users.csv (user_id,gender,age,occupation,zip);
- ml-25m: ratings.csv (userId,movieId,rating,timestamp; half stars 0.5-5.0) and
  movies.csv (movieId,title,genres), no user attributes (ML-25M has none);
- ml-1m: ratings.dat, movies.dat, users.dat, `::`-separated latin-1 (what recpipe ingests).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

# ML-25M's size and time span (first and last rating).
ML25M_RATINGS, ML25M_USERS, ML25M_ITEMS = 25_000_095, 162_541, 62_423
DEFAULT_START, DEFAULT_END = "1995-01-09", "2019-11-21"
DAY = 86_400
MIN_ITEMS = 2000
CHUNK_RATINGS = 1 << 20  # ratings per generation chunk (cache-friendly, flat memory)
FORMATS = ("generic", "ml-25m", "ml-1m")

GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
# How often each genre is an item's main genre (roughly MovieLens' mix).
GENRE_PRIOR = np.array([9, 4, 3, 3, 20, 4, 5, 25, 2, 1, 5, 2, 2, 6, 3, 7, 2, 2], dtype=np.float64)
GENRE_PRIOR /= GENRE_PRIOR.sum()
ML25M_GENRE_NAMES = {"Children's": "Children"}  # ML-25M renamed this one

AGES = np.array([1, 18, 25, 35, 45, 50, 56])
AGE_P = np.array([0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06])
_WORDS_A = ("Silent Dark Last Lost Broken Golden Hidden Red Wild Cold Secret Little Final Eternal Burning "
            "Crimson Distant Empty Fallen Frozen Hollow Lonely Midnight Quiet Restless Savage Shining "
            "Strange Sweet Velvet Wicked Young Blue Iron Glass Paper Electric Forgotten Perfect Endless").split()
_WORDS_B = ("River City Night Road Heart Garden Game Dream Storm Mirror House Island Kingdom Letter "
            "Machine Memory Moon Ocean Promise Shadow Sky Song Summer Train Valley Winter World Stranger "
            "Soldier Detective Hunter Witness Bride Planet Empire Circus Harbor Frontier Orchard").split()

# Behaviour knobs (documented in the module docstring).
ZIPF_EXPONENT = 1.2  # item popularity ~ (rank + q)^-s
# Zipf-Mandelbrot: weight (rank + q)^-s with q = this share of the catalogue (~40 at
# ML-25M's size), so that the top items are rated by about half of the users, not all.
ZIPF_FLAT_HEAD = 0.0006
ACTIVITY_TAIL = 1.15  # user ratings ~ Pareto(alpha) from MIN_USER_RATINGS (mean ~150 at 20)
MIN_USER_RATINGS = 20
BACK_CATALOGUE = 0.3  # share of items released before the span starts
SESSION_MEAN_LEN = 12  # later sessions: geometric lengths
ONBOARDING_MIN = 10  # first session: at least this many (or all the user's ratings)
WITHIN_GAP_S = 25.0  # mean seconds between ratings of one session
BETWEEN_GAP_MEDIAN_S = 2 * DAY  # log-normal gap between sessions
BETWEEN_GAP_SIGMA = 1.6
IN_GENRE = 0.7  # share of a session's ratings taken from the session's genre
RECENT = 0.15  # share of ratings restricted to the last RECENT_DAYS of releases
RECENT_DAYS = 730
TICKETS = 1 << 22  # resolution of popularity-weighted sampling (see _tickets)
FACTORS = 8
SAME_ROUNDS = 8  # redraws of a repeated pair from its own distribution before falling back
BITMAP_BITS = 1 << 31  # max users x items of one chunk's bitmap (256 MiB)
RATING_MEAN = 3.45  # intercept: chosen pairs lean to liked genres, so the mean lands near 3.5


@dataclass(frozen=True)
class Spec:
    ratings: int = ML25M_RATINGS
    users: int | None = None  # default: ML-25M's users per rating
    items: int | None = None  # default: ML-25M's items per rating
    start: str = DEFAULT_START
    end: str = DEFAULT_END
    seed: int = 0

    @property
    def n_users(self) -> int:
        if self.users is not None:
            return int(self.users)
        return max(10, round(self.ratings * ML25M_USERS / ML25M_RATINGS))

    @property
    def n_items(self) -> int:
        if self.items is not None:
            return int(self.items)
        # At least MIN_ITEMS so small runs keep ML-25M's ~150 ratings per user feasible.
        return max(MIN_ITEMS, round(self.ratings * ML25M_ITEMS / ML25M_RATINGS))

    @property
    def start_ts(self) -> int:
        return int(datetime.fromisoformat(self.start).replace(tzinfo=timezone.utc).timestamp())

    @property
    def end_ts(self) -> int:
        return int(datetime.fromisoformat(self.end).replace(tzinfo=timezone.utc).timestamp())


@dataclass
class Catalogue:
    release_day: np.ndarray  # int32, sorted: item index = release order
    genres: np.ndarray  # int8 (n, 3): genre codes, -1 = none; column 0 is the main genre
    weight: np.ndarray  # float64 popularity weight
    bias: np.ndarray  # float32 rating bias
    factors: np.ndarray  # float32 (n, FACTORS)
    year: np.ndarray  # int32 year in the title
    titles: list[str] = field(default_factory=list)


@dataclass
class Population:
    join_ts: np.ndarray  # int64, sorted: user index = join order
    counts: np.ndarray  # int64 ratings per user
    taste_cum: np.ndarray  # float32 (n, genres) cumulative genre taste
    bias: np.ndarray  # float32
    factors: np.ndarray  # float32 (n, FACTORS)
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray


# ------------------------------------------------------------------------ catalogue
def _make_catalogue(spec: Spec, rng: np.random.Generator, genre_vectors: np.ndarray) -> Catalogue:
    n, g = spec.n_items, len(GENRES)
    days = (spec.end_ts - spec.start_ts) // DAY
    back = rng.random(n) < BACK_CATALOGUE
    # Releases speed up over the span (density ~ sqrt(t)); a day before the end at the latest.
    release = np.where(back, 0, (rng.random(n) ** (2 / 3) * (days - 1)).astype(np.int64))
    release = np.sort(release).astype(np.int32)
    main = rng.choice(g, size=n, p=GENRE_PRIOR)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.4, 0.35, 0.25])
    genres = np.full((n, 3), -1, dtype=np.int8)
    genres[:, 0] = main
    for col in (1, 2):
        want = n_genres > col
        pick = rng.choice(g, size=n, p=GENRE_PRIOR)
        clash = want & ((pick == genres[:, 0]) | (pick == genres[:, 1]))
        while clash.any():  # redraw the few that repeat a genre the item already has
            pick[clash] = rng.choice(g, size=int(clash.sum()), p=GENRE_PRIOR)
            clash = want & ((pick == genres[:, 0]) | (pick == genres[:, 1]))
        genres[want, col] = pick[want]
    rank = rng.permutation(n) + 1
    weight = (rank + ZIPF_FLAT_HEAD * n).astype(np.float64) ** -ZIPF_EXPONENT
    # Popular items rate a little higher; centred on what gets rated (popularity-weighted),
    # so the mean rating does not drift with the catalogue's size.
    log_w = np.log(weight)
    share = weight / weight.sum()
    centre = (share * log_w).sum()
    spread = np.sqrt((share * (log_w - centre) ** 2).sum())
    bias = (0.25 * (log_w - centre) / spread + rng.normal(0, 0.3, n)).astype(np.float32)
    has = genres >= 0
    mix = (genre_vectors[np.where(has, genres, 0)] * has[..., None]).sum(1) / has.sum(1, keepdims=True)
    factors = (mix + 0.5 * rng.standard_normal((n, FACTORS))).astype(np.float32)
    start_year = datetime.fromisoformat(spec.start).year
    release_year = np.array([datetime.fromtimestamp(spec.start_ts + int(d) * DAY, timezone.utc).year
                             for d in range(days + 1)], dtype=np.int32)[release]
    old_year = np.maximum(1902, start_year - 1 - rng.exponential(15, n).astype(np.int32))
    late = rng.random(n) < 0.2  # some releases reach the catalogue a year or two after their year
    year = np.where(release == 0, old_year, release_year - late * rng.integers(1, 3, n)).astype(np.int32)
    a = rng.integers(0, len(_WORDS_A), n)
    b = rng.integers(0, len(_WORDS_B), n)
    the = rng.random(n) < 0.15  # MovieLens' "Title, The (1999)"
    titles = [f"{_WORDS_A[a[i]]} {_WORDS_B[b[i]]}{', The' if the[i] else ''} ({year[i]})" for i in range(n)]
    return Catalogue(release, genres, weight, bias, factors, year, titles)


class _Tickets:
    """Popularity-weighted draws from a range of items in O(1): every item owns a run
    of tickets proportional to its weight (at least one); a uniform ticket in
    [lo, hi) of a table ordered by (genre, release) or by release is a weighted draw
    from those items. `by_genre[g, d + 1]` / `by_release[d + 1]` = end of the tickets of
    items released by day d (index 0: before the first day)."""

    def __init__(self, cat: Catalogue, days: int):
        n_tickets = np.maximum(1, np.round(cat.weight / cat.weight.sum() * TICKETS)).astype(np.int64)
        n_g = len(GENRES)
        self.all = np.repeat(np.arange(len(cat.weight), dtype=np.int32), n_tickets)
        per_day = np.bincount(cat.release_day, weights=n_tickets, minlength=days + 1)
        self.by_release = np.r_[0, np.cumsum(per_day)].astype(np.int64)
        self.items_by_release = np.r_[0, np.cumsum(np.bincount(cat.release_day, minlength=days + 1))].astype(np.int64)
        main = cat.genres[:, 0].astype(np.int64)
        order = np.lexsort((cat.release_day, main))  # stable: genre, then release
        self.genre = np.repeat(order.astype(np.int32), n_tickets[order])
        table = np.zeros((n_g, days + 2), dtype=np.int64)
        np.add.at(table, (main, cat.release_day.astype(np.int64) + 1), n_tickets)
        seg_start = np.r_[0, np.cumsum(table.sum(1))[:-1]]
        self.by_genre = (np.cumsum(table, axis=1) + seg_start[:, None]).ravel()
        self.width = days + 2
        self.both = np.concatenate([self.genre, self.all]).astype(np.int64)


# ----------------------------------------------------------------------- population
def _make_population(spec: Spec, rng: np.random.Generator, cat: Catalogue, genre_vectors: np.ndarray,
                     tickets: _Tickets) -> Population:
    n, g = spec.n_users, len(GENRES)
    days = (spec.end_ts - spec.start_ts) // DAY
    join_ts = np.sort(spec.start_ts + (rng.random(n) * (days - 1) * DAY).astype(np.int64))
    # Cap: half the items released by the join day, so every user can find unrated items.
    join_day = (join_ts - spec.start_ts) // DAY
    cap = np.maximum(1, tickets.items_by_release[join_day + 1] // 2)
    floor_ = min(MIN_USER_RATINGS, max(1, spec.ratings // n))
    if cap.sum() < spec.ratings:
        raise ValueError(f"{spec.ratings} ratings do not fit {n} users x {spec.n_items} items; give more users or items")
    raw = floor_ * (1 - rng.random(n)) ** (-1 / ACTIVITY_TAIL)
    counts = np.clip(np.floor(raw), floor_, cap)
    for _ in range(20):  # rescale what is above the floor towards the exact total, within the caps
        above = counts - floor_
        scale = (spec.ratings - floor_ * n) / max(above.sum(), 1.0)
        counts = np.clip(floor_ + np.floor(above * scale), floor_, cap)
    counts = counts.astype(np.int64)
    diff = spec.ratings - int(counts.sum())
    while diff != 0:  # hand out (or take back) the remainder, one rating per user
        room = np.flatnonzero(counts < cap) if diff > 0 else np.flatnonzero(counts > floor_)
        if len(room) == 0:
            raise ValueError("cannot place the ratings within the users' floor and caps")
        chosen = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        counts[chosen] += np.sign(diff)
        diff = spec.ratings - int(counts.sum())
    # Taste: the genre mix times a heavy-tailed personal factor (a few favourites), so that
    # summed over users each genre gets about its share of the catalogue and small genres'
    # items are not over-rated as a whole.
    taste = GENRE_PRIOR * rng.gamma(0.5, size=(n, g))
    taste = 0.85 * taste / taste.sum(1, keepdims=True) + 0.15 * GENRE_PRIOR
    taste_cum = np.cumsum(taste, axis=1).astype(np.float32)
    taste_cum[:, -1] = 1.0
    factors = ((taste - GENRE_PRIOR) @ genre_vectors * 3.0 + 0.3 * rng.standard_normal((n, FACTORS)))
    bias = rng.normal(0, 0.35, n).astype(np.float32)
    gender = np.where(rng.random(n) < 0.72, "M", "F")
    age = rng.choice(AGES, size=n, p=AGE_P)
    occupation = rng.integers(0, 21, n)
    zip_codes = np.char.zfill(rng.integers(0, 100_000, n).astype(str), 5)
    return Population(join_ts, counts, taste_cum, bias, factors.astype(np.float32), gender, age, occupation,
                      zip_codes)


# --------------------------------------------------------------------------- ratings
@dataclass
class Chunk:
    user: np.ndarray  # int64 user index (0-based)
    item: np.ndarray  # int64 item index (0-based)
    ts: np.ndarray  # int64 Unix seconds
    half_stars: np.ndarray  # int64 1..10 (0.5 .. 5.0 stars)

    @property
    def stars(self) -> np.ndarray:  # whole stars 1..5 (ml-1m, generic): half stars rounded half up
        return np.clip((self.half_stars + 1) // 2, 1, 5)


class Generator:
    """Holds the catalogue and the population; yields rating chunks in user order."""

    def __init__(self, spec: Spec):
        self.spec = spec
        if spec.end_ts - spec.start_ts < 30 * DAY:
            raise ValueError("the time span must cover at least 30 days")
        root = np.random.SeedSequence(spec.seed)
        world_seed, self._chunk_seed = root.spawn(2)
        rng = np.random.default_rng(world_seed)
        self.days = (spec.end_ts - spec.start_ts) // DAY
        genre_vectors = rng.standard_normal((len(GENRES), FACTORS))
        self.catalogue = _make_catalogue(spec, rng, genre_vectors)
        self.tickets = _Tickets(self.catalogue, self.days)
        self.population = _make_population(spec, rng, self.catalogue, genre_vectors, self.tickets)
        # Scale the affinity to a standard deviation of ~0.8 stars (measured on a sample).
        u = rng.integers(0, spec.n_users, 20_000)
        i = rng.integers(0, spec.n_items, 20_000)
        raw = np.einsum("ij,ij->i", self.population.factors[u], self.catalogue.factors[i])
        self._affinity_scale = np.float32(0.8 / max(raw.std(), 1e-6))
        self._affinity_shift = np.float32(raw.mean())
        bounds = np.r_[0, np.cumsum(self.population.counts)]
        # Chunk borders at user boundaries, ~CHUNK_RATINGS ratings each (fixed by the spec),
        # and few enough users that the chunk's users x items bitmap stays under BITMAP_BITS.
        cuts = np.searchsorted(bounds, np.arange(CHUNK_RATINGS, bounds[-1], CHUNK_RATINGS))
        cuts = np.unique(np.r_[0, cuts, spec.n_users])
        max_users = max(1, BITMAP_BITS // spec.n_items)
        self.user_cuts = np.unique(np.concatenate(
            [np.arange(lo, hi, max_users) for lo, hi in zip(cuts[:-1], cuts[1:])] + [[spec.n_users]]))

    def __len__(self) -> int:
        return len(self.user_cuts) - 1

    def chunks(self):
        seeds = self._chunk_seed.spawn(len(self))
        for k in range(len(self)):
            yield self.chunk(int(self.user_cuts[k]), int(self.user_cuts[k + 1]), np.random.default_rng(seeds[k]))

    def chunk(self, u0: int, u1: int, rng: np.random.Generator) -> Chunk:
        pop, cat, tk, spec = self.population, self.catalogue, self.tickets, self.spec
        counts = pop.counts[u0:u1]
        m = int(counts.sum())
        first = np.r_[0, np.cumsum(counts)[:-1]]
        local = np.repeat(np.arange(u1 - u0, dtype=np.int64), counts)
        pos = np.arange(m) - first[local]
        onboarding = np.minimum(counts, ONBOARDING_MIN + rng.geometric(0.15, u1 - u0) - 1)
        onb = onboarding[local]
        new_session = (pos == 0) | (pos == onb) | ((pos > onb) & (rng.random(m, dtype=np.float32) < 1 / SESSION_MEAN_LEN))
        # Times: seconds apart within a session, log-normal gaps between sessions; a user's
        # between-session gaps shrink where they would run past the end of the span.
        gap = rng.exponential(WITHIN_GAP_S, m)
        starts = np.flatnonzero(new_session)
        gap[starts] = 0.0
        later = starts[pos[starts] > 0]
        between = np.maximum(3600.0, BETWEEN_GAP_MEDIAN_S * np.exp(BETWEEN_GAP_SIGMA * rng.standard_normal(len(later))))
        sum_w = np.add.reduceat(gap, first)
        sum_b = np.bincount(local[later], weights=between, minlength=u1 - u0)
        room = (spec.end_ts - 1 - pop.join_ts[u0:u1]).astype(np.float64) - sum_w
        shrink = np.clip(np.divide(room, sum_b, out=np.ones_like(room), where=sum_b > 0), 0.0, 1.0)
        gap[later] = between * shrink[local[later]]
        run = np.cumsum(gap)
        run -= run[first][local]
        ts = np.minimum(pop.join_ts[u0:u1][local] + run.astype(np.int64), spec.end_ts - 1)
        day = (ts - spec.start_ts) // DAY
        # A genre per session from the user's taste.
        session = np.cumsum(new_session) - 1
        draw = rng.random(len(starts), dtype=np.float32)
        s_genre = (pop.taste_cum[u0:u1][local[starts]] < draw[:, None]).sum(1)
        genre = np.minimum(s_genre, len(GENRES) - 1)[session]
        # Each rating draws a ticket from [lo, hi) of one of two ticket tables (see _Tickets).
        recent = rng.random(m, dtype=np.float32) < RECENT
        recent_day = np.where(recent, np.maximum(day - RECENT_DAYS + 1, 0), 0)
        row = genre * tk.width
        g_hi = tk.by_genre[row + day + 1]
        g_lo = tk.by_genre[row + recent_day]
        g_lo = np.where(g_lo < g_hi, g_lo, tk.by_genre[row])  # no recent release in that genre
        # Off-genre picks, and genres with nothing released yet, draw from everything.
        use_genre = (rng.random(m, dtype=np.float32) < IN_GENRE) & (tk.by_genre[row] < g_hi)
        # The global table sits after the genre table in `tk.both`: one gather per draw.
        a_hi = tk.by_release[day + 1]
        a_lo = tk.by_release[recent_day]
        a_lo = np.where(a_lo < a_hi, a_lo, 0)
        lo = np.where(use_genre, g_lo, a_lo + len(tk.genre))
        span = np.where(use_genre, g_hi - g_lo, a_hi - a_lo)

        def draw_items(rows):
            # float32 draws are cheaper; r * span can round up to span itself, hence the clamp.
            offset = (rng.random(len(rows), dtype=np.float32) * span[rows].astype(np.float32)).astype(np.int64)
            return tk.both[lo[rows] + np.minimum(offset, span[rows] - 1)]

        item = self._unique_pairs(local, draw_items(np.arange(m)), day, draw_items, rng)
        user = local + u0
        affinity = np.einsum("ij,ij->i", pop.factors[user], cat.factors[item]) - self._affinity_shift
        score = (RATING_MEAN + pop.bias[user] + cat.bias[item] + affinity * self._affinity_scale
                 + np.float32(0.7) * rng.standard_normal(m, dtype=np.float32))
        half_stars = np.clip(np.rint(score * 2), 1, 10).astype(np.int64)
        return Chunk(user, item, ts, half_stars)

    def _unique_pairs(self, user, item, day, draw_items, rng) -> np.ndarray:
        """Redraw the repeats of a (user, item) pair (all but the earliest) until none is
        left. Redrawing from the same distribution is sampling without replacement
        (successive sampling), which keeps popular items popular; a user who has used up
        most of a small range (a genre's recent releases) falls back after SAME_ROUNDS to
        overall popularity, then to a uniform pick among the items released by then (a
        user's cap keeps at least half of those unrated). A bitmap of the chunk's
        users x items answers "already rated?" in O(1)."""
        n_items = self.spec.n_items
        m = len(item)
        row_bits = max(1, int(m - 1).bit_length())
        key = user * n_items + item
        packed = np.sort((key << row_bits) | np.arange(m, dtype=np.int64))
        sorted_key = packed >> row_bits
        repeat = np.r_[False, sorted_key[1:] == sorted_key[:-1]]
        pending = packed[repeat] & ((1 << row_bits) - 1)
        bitmap = np.zeros(((int(user[-1]) + 1) * n_items + 7) // 8, dtype=np.uint8)
        _set_bits(bitmap, sorted_key[~repeat])
        tk = self.tickets
        for round_ in range(1, 10_000):
            if len(pending) == 0:
                return item
            if round_ <= SAME_ROUNDS:
                cand = draw_items(pending)
            elif round_ <= SAME_ROUNDS + 2:
                cand = tk.all[(rng.random(len(pending)) * tk.by_release[day[pending] + 1]).astype(np.int64)].astype(np.int64)
            else:
                cand = (rng.random(len(pending)) * tk.items_by_release[day[pending] + 1]).astype(np.int64)
            ck = user[pending] * n_items + cand
            free = (bitmap[ck >> 3] >> (ck & 7).astype(np.uint8)) & 1 == 0
            uniq, first_of = np.unique(ck[free], return_index=True)
            ok = np.zeros(len(ck), dtype=bool)
            ok[np.flatnonzero(free)[first_of]] = True
            item[pending[ok]] = cand[ok]
            _set_bits(bitmap, uniq)
            pending = pending[~ok]
        raise RuntimeError("could not make (user, item) pairs unique")


def _set_bits(bitmap: np.ndarray, sorted_unique_keys: np.ndarray) -> None:
    if len(sorted_unique_keys) == 0:
        return
    byte = sorted_unique_keys >> 3
    bit = np.left_shift(1, (sorted_unique_keys & 7)).astype(np.uint8)
    starts = np.r_[0, np.flatnonzero(byte[1:] != byte[:-1]) + 1]  # keys sharing a byte are adjacent
    bitmap[byte[starts]] |= np.bitwise_or.reduceat(bit, starts)


# ------------------------------------------------------------------------ CSV bytes
# "00".."99" as little-endian uint16 pairs of ASCII digits: two digits per store.
_PAIRS = np.array([(48 + k // 10) | ((48 + k % 10) << 8) for k in range(100)], dtype="<u2")


def format_rows(columns: list[tuple[str, np.ndarray]], sep: bytes) -> bytes:
    """Lines of text from integer columns without Python per row.

    Every line is laid out in one row of an (n, width) byte matrix: each integer field
    has an even width and starts at an even offset, so its digits are written two at a
    time (as uint16 from `_PAIRS`) right-aligned; leading zeros and padding are then
    dropped by one boolean mask. Column kinds: "int" (non-negative integer), "half"
    (half stars 1..10 -> "0.5".."5.0"). Gives the same bytes as pandas' to_csv, ~10x
    faster (measured: 1M rows of four columns 0.2-0.3 s vs 2.4-3.2 s)."""
    n = len(columns[0][1])
    layout, at = [], 0
    for j, (kind, values) in enumerate(columns):
        values = np.asarray(values)
        if kind not in ("int", "half"):
            raise ValueError(f"unknown column kind {kind!r}")
        if n and values.min() < 0:
            raise ValueError("negative values are not supported")
        top = int(values.max()) if n else 0
        # uint32 arithmetic is about twice as fast as uint64: use it whenever values fit.
        v = values.astype(np.uint32 if top < 2**32 else np.uint64)
        if kind == "int":
            at += at % 2  # even offset (a padding byte, masked out)
            w = len(str(top))
            w += w % 2
        else:
            w = 3
        layout.append((kind, v, at, w))
        at += w + (len(sep) if j < len(columns) - 1 else 1)
    total = at + at % 2
    mat = np.zeros((n, total), dtype=np.uint8)
    keep = np.zeros((n, total), dtype=bool)
    mat16 = mat.view("<u2")
    sep_bytes = np.frombuffer(sep, dtype=np.uint8)
    for j, (kind, v, at, w) in enumerate(layout):
        if kind == "int":
            rest = v
            hundred = v.dtype.type(100)
            for k in range((at + w) // 2 - 1, at // 2 - 1, -1):  # pairs, least significant first
                quot = rest // hundred
                mat16[:, k] = _PAIRS[rest - quot * hundred]
                rest = quot
            keep[:, at + w - 1] = True  # the units digit always stays
            for k in range(1, w):  # the digit worth 10**k stays when v >= 10**k
                keep[:, at + w - 1 - k] = v >= v.dtype.type(10**k)
        else:
            mat[:, at] = (v // 2).astype(np.uint8) + 48
            mat[:, at + 1] = ord(".")
            mat[:, at + 2] = np.where(v % 2 == 1, ord("5"), ord("0"))
            keep[:, at:at + 3] = True
        end = at + w
        tail = sep_bytes if j < len(layout) - 1 else np.frombuffer(b"\n", dtype=np.uint8)
        mat[:, end:end + len(tail)] = tail
        keep[:, end:end + len(tail)] = True
    return mat[keep].tobytes()


# --------------------------------------------------------------------------- writing
def _genre_names(codes: np.ndarray, fmt: str) -> list[str]:
    names = [ML25M_GENRE_NAMES.get(g, g) for g in GENRES] if fmt == "ml-25m" else GENRES
    # The main genre first (recpipe's genre1), the others alphabetically as MovieLens lists them.
    return ["|".join([names[row[0]]] + sorted(names[c] for c in row[1:] if c >= 0)) for row in codes.tolist()]


def write(out: str | Path, spec: Spec = Spec(), fmt: str = "generic", users_file: bool = True,
          progress=None) -> dict:
    """Generate `spec` into folder `out` in format `fmt`; returns counts and timings."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {FORMATS})")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(spec)
    setup_s = time.perf_counter() - started
    cat, pop = gen.catalogue, gen.population
    item_ids = np.arange(1, spec.n_items + 1)
    user_ids = np.arange(1, spec.n_users + 1)
    genres = _genre_names(cat.genres, fmt)
    if fmt == "ml-1m":
        ratings_name, sep, header = "ratings.dat", b"::", b""
        with open(out / "movies.dat", "wb") as fh:
            fh.write("".join(f"{i}::{t}::{g}\n" for i, t, g in zip(item_ids, cat.titles, genres)).encode("latin-1"))
        with open(out / "users.dat", "wb") as fh:
            fh.write("".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in zip(
                user_ids, pop.gender, pop.age, pop.occupation, pop.zip)).encode("latin-1"))
    else:
        ratings_name, sep = "ratings.csv", b","
        if fmt == "ml-25m":
            header = b"userId,movieId,rating,timestamp\n"
            pd.DataFrame({"movieId": item_ids, "title": cat.titles, "genres": genres}).to_csv(
                out / "movies.csv", index=False)
        else:
            header = b"user_id,item_id,rating,timestamp\n"
            pd.DataFrame({"item_id": item_ids, "title": cat.titles, "genres": genres}).to_csv(
                out / "items.csv", index=False)
            if users_file:
                pd.DataFrame({"user_id": user_ids, "gender": pop.gender, "age": pop.age,
                              "occupation": pop.occupation, "zip": pop.zip}).to_csv(out / "users.csv", index=False)
    rows = 0
    gen_s = fmt_s = write_s = 0.0
    with open(out / ratings_name, "wb") as fh:
        fh.write(header)
        chunks = gen.chunks()
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            if chunk is None:
                break
            t1 = time.perf_counter()
            rating = ("half", chunk.half_stars) if fmt == "ml-25m" else ("int", chunk.stars)
            data = format_rows([("int", chunk.user + 1), ("int", chunk.item + 1), rating, ("int", chunk.ts)], sep)
            t2 = time.perf_counter()
            fh.write(data)
            t3 = time.perf_counter()
            gen_s, fmt_s, write_s = gen_s + t1 - t0, fmt_s + t2 - t1, write_s + t3 - t2
            rows += len(chunk.user)
            if progress:
                progress(rows, spec.ratings)
    seconds = time.perf_counter() - started
    return {"format": fmt, "out": str(out), "ratings": rows, "users": spec.n_users, "items": spec.n_items,
            "seed": spec.seed, "seconds": seconds, "rows_per_s": rows / seconds if seconds else float("nan"),
            "setup_s": setup_s, "generate_s": gen_s, "format_s": fmt_s, "write_s": write_s,
            "bytes": (out / ratings_name).stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recpipe.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=ML25M_RATINGS)
    parser.add_argument("--users", type=int, help="default: ML-25M's users per rating")
    parser.add_argument("--items", type=int, help="default: ML-25M's items per rating")
    parser.add_argument("--start", default=DEFAULT_START, help="first day (ISO date, UTC)")
    parser.add_argument("--end", default=DEFAULT_END, help="end of the span (exclusive)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="generic")
    parser.add_argument("--no-users", action="store_true", help="generic format: do not write users.csv")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    spec = Spec(ratings=args.ratings, users=args.users, items=args.items, start=args.start, end=args.end,
                seed=args.seed)
    try:
        result = write(args.out, spec, args.format, users_file=not args.no_users)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result['ratings']:,} ratings, {result['users']:,} users, {result['items']:,} items -> {result['out']}"
          f" ({args.format}) in {result['seconds']:.1f} s: {result['rows_per_s']:,.0f} rows/s"
          f" [setup {result['setup_s']:.1f} s, generate {result['generate_s']:.1f} s,"
          f" format {result['format_s']:.1f} s, write {result['write_s']:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
