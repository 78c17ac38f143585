"""Source formats beyond ML-1M: detection, the CSV readers, ML-25M/32M downloads.

The interactions contract (every format): ratings (user, item, rating, timestamp) are
required; item attributes (title, genres) and user attributes (gender, age,
occupation, zip) are optional. Without a users file every user who rates is stored
with NULL attributes; without an items file likewise every rated item. With a file,
its ids are the known ones: a rating of another id is `unknown_user`/`unknown_movie`.

Formats (`RECPIPE_SOURCE_FORMAT`, `recpipe ingest --format`):
- ml-1m: ratings.dat, movies.dat, users.dat (recpipe.source);
- ml-25m, ml-32m (same layout): ratings.csv `userId,movieId,rating,timestamp` and
  movies.csv `movieId,title,genres` (titles quoted when they hold a comma), UTF-8, no
  users file;
- generic: ratings.csv `user_id,item_id,rating,timestamp`; optional items.csv
  (`item_id` then any of `title`, `genres`) and users.csv (`user_id` then any of
  `gender`, `age`, `occupation`, `zip`); an empty value is a missing attribute;
- auto: ratings.dat -> ml-1m; ratings.csv -> by its header (ml-32m when README.txt
  names MovieLens 32M). Parquet is not supported (pyarrow is not installed).

CSV rules: line 1 is the header and must be exactly the layout's (else the file is
refused whole with a SourceError); it is checked, not counted among the lines read.
Each later line is one record: it is stored or quarantined with a reason, exactly as
for the .dat files (same codes, plus `bad_csv` for broken quoting; a quoted field
spanning lines is therefore refused). Ratings lines must be ASCII digits; ratings are
whole or half stars 0.5..5 ("4", "4.0", "3.5"); timestamps Unix seconds.

Half stars: `ratings.rating` (smallint 1..5, what the models read) is the stars
rounded down, 0.5 -> 1, so every whole-star threshold (liked = 4+, sessions = 3+)
means what it meant; `ratings.rating_x2` keeps the exact value in half stars (1..10).
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe import source
from recpipe.config import SOURCE_FORMATS
from recpipe.source import (
    BAD_TIMESTAMP, BAD_VALUE, CONTROL_CHARS, EMPTY_LINE, FIELD_COUNT, ID_OUT_OF_RANGE,
    INT_MAX, MAX_TIMESTAMP, MIN_TIMESTAMP, NON_NUMERIC_ID, RATING_OUT_OF_RANGE, UNDECODABLE, WHITESPACE_IN_FIELD,
    Parsed, SourceError,
)

FORMATS = SOURCE_FORMATS  # auto, ml-1m, ml-25m, ml-32m, generic
BAD_CSV = "bad_csv"  # quoting that does not parse (an unclosed quote, text after a closing one)

ML_RATINGS_HEADER = "userId,movieId,rating,timestamp"
ML_MOVIES_HEADER = ("movieId", "title", "genres")
GENERIC_RATINGS_HEADER = "user_id,item_id,rating,timestamp"
ITEM_COLUMNS = ("title", "genres")
USER_COLUMNS = ("gender", "age", "occupation", "zip")
NO_GENRES = "(no genres listed)"  # ML-25M's filler: no genre

_NOT_CSV_DIGITS = np.ones(256, bool)
_NOT_CSV_DIGITS[[*range(48, 58), 44, 46, 10]] = False  # digits , . and the newline
_HALF_STARS = re.compile(r"([0-9]+)(?:\.([0-9]+))?\Z")


@dataclass(frozen=True)
class SourceFiles:
    """A resolved source folder: its format and the files to read (None: not provided)."""

    format: str
    folder: Path
    ratings: Path
    items: Path | None
    users: Path | None

    def parse_ratings(self) -> Parsed:
        if self.format == "ml-1m":
            parsed = source.parse_ratings(self.ratings)
            parsed.rows["rating_x2"] = (parsed.rows["rating"] * 2).astype("int16")
            return parsed
        header = ML_RATINGS_HEADER if self.format in ("ml-25m", "ml-32m") else GENERIC_RATINGS_HEADER
        return parse_csv_ratings(self.ratings, header)

    def parse_items(self) -> Parsed | None:
        if self.items is None:
            return None
        if self.format == "ml-1m":
            return source.parse_movies(self.items)
        return parse_csv_items(self.items, id_column="movieId" if self.format != "generic" else "item_id",
                               exact=ML_MOVIES_HEADER if self.format != "generic" else None)

    def parse_users(self) -> Parsed | None:
        if self.users is None:
            return None
        if self.format == "ml-1m":
            return source.parse_users(self.users)
        return parse_csv_users(self.users)


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        line = fh.readline(4096)
    return line.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n").decode("latin-1")


def detect_format(folder: Path) -> str:
    """The format of a folder from the files present (and ratings.csv's header)."""
    folder = Path(folder)
    if (folder / source.RATINGS_FILE).is_file():
        return "ml-1m"
    ratings = folder / "ratings.csv"
    if ratings.is_file():
        header = _first_line(ratings)
        if header == ML_RATINGS_HEADER:
            readme = folder / "README.txt"
            text = readme.read_text("latin-1", "replace")[:4096] if readme.is_file() else ""
            return "ml-32m" if "32M" in text or "ml-32m" in text else "ml-25m"
        if header == GENERIC_RATINGS_HEADER:
            return "generic"
        raise SourceError(f"{ratings}: header {header[:80]!r} is neither ML-25M/32M's {ML_RATINGS_HEADER!r}"
                          f" nor the generic {GENERIC_RATINGS_HEADER!r}")
    if any(folder.glob("*.parquet")):
        raise SourceError(f"{folder} holds Parquet files: not supported (pyarrow is not installed); "
                          "write ratings.csv (user_id,item_id,rating,timestamp) instead")
    raise SourceError(f"source folder {folder} has neither ratings.dat (ML-1M) nor ratings.csv (ML-25M/32M, generic)")


def resolve(folder: Path | None, fmt: str = "auto") -> SourceFiles:
    """The files of a source folder in format fmt (auto: detected), or SourceError saying what is missing."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown source format {fmt!r}: one of {', '.join(FORMATS)}")
    if folder is None or not Path(folder).is_dir():
        source.check_source_dir(folder)  # raises with the message that says what to do
    folder = Path(folder)
    if fmt == "auto":
        fmt = detect_format(folder)
    if fmt == "ml-1m":
        folder = source.check_source_dir(folder)
        return SourceFiles(fmt, folder, folder / source.RATINGS_FILE, folder / source.MOVIES_FILE,
                           folder / source.USERS_FILE)
    required = ["ratings.csv"] + (["movies.csv"] if fmt != "generic" else [])
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise SourceError(f"source folder {folder} ({fmt}) lacks {', '.join(missing)}")
    if fmt == "generic":
        items, users = folder / "items.csv", folder / "users.csv"
        return SourceFiles(fmt, folder, folder / "ratings.csv", items if items.is_file() else None,
                           users if users.is_file() else None)
    return SourceFiles(fmt, folder, folder / "ratings.csv", folder / "movies.csv", None)


# ----------------------------------------------------------------------- ratings.csv


def _check_header(src, path: Path, expected: str) -> None:
    if len(src.starts) == 0:
        raise SourceError(f"{path} is empty: expected the header {expected!r}")
    header = src.data[src.starts[0]: src.ends[0]].rstrip(b"\r")
    if header != expected.encode():
        raise SourceError(f"{path}: line 1 is {header[:80]!r}, expected the header {expected!r}")


def parse_csv_ratings(path: Path, header: str) -> Parsed:
    """ratings.csv into user_id, movie_id, rating (1..5), rating_x2 (half stars), ts,
    line_no (the file's line, header = 1). Well-formed lines are converted with numpy
    over the whole file; only the others go through the per-line path that finds their reason."""
    src = source._read_source(path)
    _check_header(src, path, header)
    data, starts, ends = src.data, src.starts, src.ends
    ok, (u, m, x2, t) = _fast_csv_ratings_in_passes(data, starts, ends)
    rejected, slow_good = [], []
    for i in np.flatnonzero(~ok)[1:] if len(ok) else []:  # [1:]: the header
        line = data[starts[i]: ends[i]]
        reason, parsed, ts = _csv_rating_line(line[:-1] if line.endswith(b"\r") else line)
        if reason is None:
            slow_good.append((*parsed, i + 1))
        else:
            rejected.append((int(i) + 1, source.raw_text(line, "ascii"), line, reason, ts))
    rows = pd.DataFrame({"user_id": u, "movie_id": m, "rating_x2": x2, "ts": t, "line_no": np.flatnonzero(ok) + 1})
    if slow_good:
        extra = pd.DataFrame(slow_good, columns=["user_id", "movie_id", "rating_x2", "ts", "line_no"])
        rows = pd.concat([rows, extra], ignore_index=True).sort_values("line_no", kind="stable", ignore_index=True)
    rows["rating"] = np.maximum(1, rows["rating_x2"].to_numpy(np.int64) // 2)
    rows = rows.astype({"user_id": "int64", "movie_id": "int64", "rating": "int16", "rating_x2": "int16",
                        "ts": "int64", "line_no": "int64"})
    rows = rows[["user_id", "movie_id", "rating", "rating_x2", "ts", "line_no"]]
    return Parsed(rows, source._rejected_frame(rejected), len(starts) - 1, src.sha256, src.encoding, 0, data,
                  starts, ends)


# Lines per vectorised pass: the pass's temporaries (a few int64 arrays per line and per
# comma) are bounded by this, not by the file (at 25M lines they were most of the
# ingest's 7.2 GiB peak).
FAST_PARSE_LINES = 1 << 21


def _fast_csv_ratings_in_passes(data: bytes, starts: np.ndarray, ends: np.ndarray):
    """_fast_csv_ratings over FAST_PARSE_LINES lines at a time (the header in the first),
    passes side by side on source.PARSE_THREADS threads."""
    n, lines = len(starts), FAST_PARSE_LINES
    if n <= lines:
        return _fast_csv_ratings(data, starts, ends)
    view = memoryview(data)

    def one_pass(first: int):
        last = min(first + lines, n)
        lo, hi = int(starts[first]), int(ends[last - 1])
        return _fast_csv_ratings(view[lo:hi], starts[first:last] - lo, ends[first:last] - lo, header=first == 0)

    oks, values = zip(*source.parallel_map(one_pass, range(0, n, lines)))
    return np.concatenate(oks), tuple(np.concatenate(column) for column in zip(*values))


def _fast_csv_ratings(data: bytes, starts: np.ndarray, ends: np.ndarray, header: bool = True):
    """Which lines are exactly `digits,digits,D[.D],digits` (+ optional CR) with values in
    range (the header, the first line when `header`, never is), and (user, movie, half
    stars, ts) of those lines."""
    n = len(starts)
    ok = np.zeros(n, bool)
    empty = np.empty(0, np.int64)
    if n == 0:
        return ok, (empty, empty, empty, empty)
    buf = np.frombuffer(data, np.uint8)
    if len(buf) == 0:  # only empty lines: the per-line path names them
        return ok, (empty, empty, empty, empty)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    stop = ends - cr
    # Lines holding any byte but digits, ',' and '.' (a final CR aside) go to the slow path.
    odd = np.flatnonzero(_NOT_CSV_DIGITS[buf])  # one lookup: one temporary the file's size
    line_of = lambda pos: np.searchsorted(starts, pos, side="right") - 1  # noqa: E731
    n_odd = np.bincount(line_of(odd), minlength=n) - cr
    commas = np.flatnonzero(buf == 44)
    first_comma = np.searchsorted(commas, starts)
    n_commas = np.searchsorted(commas, stop) - first_comma
    dots = np.flatnonzero(buf == 46)
    first_dot = np.searchsorted(dots, starts)
    n_dots = np.searchsorted(dots, stop) - first_dot
    cand = np.flatnonzero((n_odd == 0) & (n_commas == 3) & (n_dots <= 1))
    if header:
        cand = cand[cand > 0]  # line 1 is the header
    c = commas[first_comma[cand, None] + np.arange(3)[None, :]]
    s, e = starts[cand], stop[cand]
    r_lo, r_len = c[:, 1] + 1, c[:, 2] - c[:, 1] - 1
    has_dot = n_dots[cand] == 1
    dot_at = dots[np.minimum(first_dot[cand], max(len(dots) - 1, 0))] if len(dots) else np.zeros(len(cand), np.int64)
    # The rating is "D" (no dot in the line) or "D.D" with the line's one dot in its middle.
    good = np.where(has_dot, (r_len == 3) & (dot_at == r_lo + 1), r_len == 1)
    bounds = [(s, c[:, 0]), (c[:, 0] + 1, c[:, 1]), (c[:, 2] + 1, e)]
    for (lo, hi) in bounds:
        length = hi - lo
        good &= (length >= 1) & (length <= 10)
    vals = []
    for lo, hi in bounds:
        hi = np.where(good, hi, lo)
        vals.append(source._digit_values(buf, lo, hi, 10))
    u, m, t = vals
    last = len(buf) - 1
    whole = buf[np.minimum(r_lo, last)].astype(np.int64) - 48
    frac = np.where(has_dot, buf[np.minimum(r_lo + 2, last)].astype(np.int64) - 48, 0)
    good &= (frac == 0) | (frac == 5)
    x2 = whole * 2 + (frac == 5)
    good &= (u >= 1) & (u <= INT_MAX) & (m >= 1) & (m <= INT_MAX) & (x2 >= 1) & (x2 <= 10)
    good &= (t >= MIN_TIMESTAMP) & (t < MAX_TIMESTAMP)
    ok[cand[good]] = True
    return ok, (u[good], m[good], x2[good], t[good])


def half_stars(text: str) -> int | None:
    """"4", "4.0", "3.50" -> the rating in half stars (8, 8, 7); None unless 0.5..5 by halves."""
    match = _HALF_STARS.match(text)
    if not match:
        return None
    whole = source._int_field(match.group(1))
    frac = (match.group(2) or "").rstrip("0")
    if whole is None or whole > 5 or frac not in ("", "5"):
        return None
    value = whole * 2 + (frac == "5")
    return value if 1 <= value <= 10 else None


def _csv_rating_line(body: bytes):
    """(reason, values, ts) of a ratings.csv line (without its CR) that the fast path did
    not accept; reason None means the line is good after all (e.g. "4.50", quoted numbers)."""
    ts = None
    raw_fields = body.split(b",")
    if len(raw_fields) == 4 and source._DIGITS_B.match(raw_fields[3]):
        significant = raw_fields[3].lstrip(b"0")
        if len(significant) <= 10 and MIN_TIMESTAMP <= int(significant or b"0") < MAX_TIMESTAMP:
            ts = int(significant)
    if not body.strip():
        return EMPTY_LINE, None, ts
    if source._C0_B.search(body):
        return CONTROL_CHARS, None, ts
    if not body.isascii():
        return UNDECODABLE, None, ts
    fields = _split_csv(body.decode("ascii"))
    if fields is None:
        return BAD_CSV, None, ts
    if len(fields) != 4:
        return FIELD_COUNT, None, ts
    if any(f != f.strip() for f in fields):
        return WHITESPACE_IN_FIELD, None, ts
    u, m = source._int_field(fields[0]), source._int_field(fields[1])
    if u is None or m is None:
        return NON_NUMERIC_ID, None, ts
    if not (1 <= u <= INT_MAX and 1 <= m <= INT_MAX):
        return ID_OUT_OF_RANGE, None, ts
    x2 = half_stars(fields[2])
    if x2 is None:
        return RATING_OUT_OF_RANGE, None, ts
    t = source._int_field(fields[3])
    if t is None or not MIN_TIMESTAMP <= t < MAX_TIMESTAMP:
        return BAD_TIMESTAMP, None, ts
    return None, (u, m, x2, t), ts


def _split_csv(text: str) -> list[str] | None:
    """The fields of one CSV line (RFC 4180 quoting), or None when its quoting is broken."""
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error:
        return None


# ------------------------------------------------------------ items.csv, users.csv


def _csv_records(path: Path, check_header, check):
    """Like source._records for a CSV file with a header: check_header(names) -> columns
    (or raises SourceError), check(dict of column -> text) -> (reason, key, values)."""
    src = source._read_source(path)
    if len(src.starts) == 0:
        raise SourceError(f"{path} is empty: expected a header line")
    head, reason = source._decode_line(src.data[src.starts[0]: src.ends[0]].rstrip(b"\r"), src.encoding)
    names = _split_csv(head) if reason is None else None
    if names is None:
        raise SourceError(f"{path}: line 1 is not a CSV header")
    columns = check_header(names)

    def split(text: str):
        fields = _split_csv(text)
        if fields is None:
            return None, BAD_CSV
        if len(fields) != len(columns):
            return None, FIELD_COUNT
        return dict(zip(columns, fields)), None

    return source._records(src, split, check, first_line=1)


def _header_check(path: Path, id_column: str, optional: tuple[str, ...], exact: tuple[str, ...] | None):
    def check(names: list[str]) -> list[str]:
        if exact is not None and tuple(names) != exact:
            raise SourceError(f"{path}: header {','.join(names)[:80]!r}, expected {','.join(exact)!r}")
        extra = [n for n in names[1:] if n not in optional]
        if not names or names[0] != id_column or extra or len(set(names)) != len(names):
            raise SourceError(f"{path}: header {','.join(names)[:80]!r}: expected {id_column!r} first, then any"
                              f" of {', '.join(optional)} (each once)")
        return names
    return check


def _id(text: str) -> tuple[str | None, int | None]:
    if text != text.strip():
        return WHITESPACE_IN_FIELD, None
    return source._check_id(text)


def _none_for_missing(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), None)


def parse_csv_items(path: Path, id_column: str = "item_id", exact: tuple[str, ...] | None = None) -> Parsed:
    """movies.csv / items.csv into movie_id, title, year, genres (list; None when the file
    has no genres column), line_no. Missing titles are None."""
    def check(rec: dict):
        reason, movie_id = _id(rec[id_column])
        if reason:
            return reason, None, None
        title = rec.get("title") or None
        if exact is not None and title is None:  # MovieLens lists a title for every movie
            return BAD_VALUE, None, None
        match = source._YEAR_IN_TITLE.search(title) if title else None
        genres = rec.get("genres")
        if genres is not None:
            genres = () if genres == NO_GENRES else tuple(g for g in genres.split("|") if g)
        return None, movie_id, (movie_id, title, int(match.group(1)) if match else None, genres)

    src, good, rejected, duplicate = _csv_records(path, _header_check(path, id_column, ITEM_COLUMNS, exact), check)
    rows = pd.DataFrame(good, columns=["movie_id", "title", "year", "genres", "line_no"])
    rows["genres"] = rows["genres"].map(lambda g: None if g is None else list(g)).astype(object)
    rows = rows.astype({"movie_id": "int64", "line_no": "int64"})
    rows["year"] = rows["year"].astype("Int64")
    rows["title"] = _none_for_missing(rows["title"])
    return Parsed(rows, rejected, len(src.starts) - 1, src.sha256, src.encoding, duplicate, src.data, src.starts,
                  src.ends)


def parse_csv_users(path: Path) -> Parsed:
    """users.csv into user_id, gender, age, occupation, zip (None where absent or empty), line_no."""
    def check(rec: dict):
        reason, user_id = _id(rec["user_id"])
        if reason:
            return reason, None, None
        gender, age, occ, zip_code = (rec.get(name) or None for name in USER_COLUMNS)
        age_v = None if age is None else source._int_field(age)
        occ_v = None if occ is None else source._int_field(occ)
        if (gender not in (None, "M", "F") or (age is not None and (age_v is None or age_v > INT_MAX))
                or (occ is not None and (occ_v is None or occ_v > INT_MAX))):
            return BAD_VALUE, None, None
        return None, user_id, (user_id, gender, age_v, occ_v, zip_code)

    src, good, rejected, duplicate = _csv_records(path, _header_check(path, "user_id", USER_COLUMNS, None), check)
    rows = pd.DataFrame(good, columns=["user_id", "gender", "age", "occupation", "zip", "line_no"])
    rows = rows.astype({"user_id": "int64", "age": "Int64", "occupation": "Int64", "line_no": "int64"})
    for name in ("gender", "zip"):
        rows[name] = _none_for_missing(rows[name])
    return Parsed(rows, rejected, len(src.starts) - 1, src.sha256, src.encoding, duplicate, src.data, src.starts,
                  src.ends)


# ----------------------------------------------------------------------- downloads

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
DATASETS = {"ml-25m": ("ratings.csv", "movies.csv"), "ml-32m": ("ratings.csv", "movies.csv")}
# The archives' MD5s as GroupLens publishes them (`<name>.zip.md5` beside each archive).
# Pinned here and checked against the published file at download time as well: an
# archive or a published MD5 that differs from the pin is refused (look at upstream).
# ML-1M's is source.ML1M_ZIP_MD5 (plus per-file SHA-256s).
PINNED_MD5 = {"ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada", "ml-32m": "d472be332d4daa821edc399621853b57"}


def download_dataset(name: str, dest: Path, base_url: str = GROUPLENS, timeout_s: float = 60.0,
                     expected_md5: str | None = None) -> Path:
    """ml-1m: source.download_ml1m. ml-25m / ml-32m: fetch `<name>.zip` and its published
    `<name>.zip.md5`; refuse unless both equal the pinned MD5 (expected_md5 overrides the
    pin: tests); unpack into dest/<name>."""
    if name == "ml-1m":
        return source.download_ml1m(dest, url=f"{base_url}/ml-1m.zip", timeout_s=timeout_s)
    if name not in DATASETS:
        raise SourceError(f"unknown data set {name!r}: one of ml-1m, {', '.join(DATASETS)}")
    expected = expected_md5 or PINNED_MD5[name]
    dest = Path(dest)
    target = dest / name
    marker = target / ".verified_md5"
    if marker.is_file() and marker.read_text().strip() == expected and all((target / f).is_file()
                                                                           for f in DATASETS[name]):
        return target  # unpacked from a verified archive before
    url = f"{base_url}/{name}.zip"
    try:
        with urllib.request.urlopen(url + ".md5", timeout=timeout_s) as response:
            published = parse_md5_file(response.read(), f"{name}.zip")
        if published != expected:
            raise SourceError(f"{url}.md5 publishes {published}, but recpipe expects {expected}: refusing"
                              " (the archive changed upstream? check it, then update PINNED_MD5)")
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}). Without network access, copy {name}"
            f" (ratings.csv, movies.csv) to this machine and set RECPIPE_SOURCE_DIR to that folder."
        ) from exc
    return unpack_verified(payload, expected, name, dest)


def parse_md5_file(text: bytes, archive: str) -> str:
    """The MD5 in a published `.md5` file (`<hex>  <name>` or `MD5 (<name>) = <hex>`)."""
    found = re.search(rb"\b([0-9a-fA-F]{32})\b", text)
    if not found:
        raise SourceError(f"the published MD5 file of {archive} holds no MD5: {text[:80]!r}")
    return found.group(1).decode().lower()


def unpack_verified(payload: bytes, expected_md5: str, name: str, dest: Path) -> Path:
    """Check the archive's MD5 against expected_md5 (SourceError, nothing written, when
    they differ) and unpack <name>/ into dest/<name>, atomically (a staging folder renamed)."""
    md5 = hashlib.md5(payload).hexdigest()
    if md5 != expected_md5:
        raise SourceError(f"{name}.zip has MD5 {md5}, expected {expected_md5}; refusing it")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging, target = dest / f"{name}.partial", dest / name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        members = {Path(m).name: m for m in archive.namelist() if m.startswith(f"{name}/") and not m.endswith("/")}
        missing = [f for f in DATASETS[name] if f not in members]
        if missing:
            shutil.rmtree(staging)
            raise SourceError(f"{name}.zip lacks {', '.join(missing)}")
        for short, member in members.items():
            with archive.open(member) as src, open(staging / short, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    (staging / ".verified_md5").write_text(md5 + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
