"""MovieLens-1M source files: read, validate, download.

Format: `::`-separated; ratings.dat `UserID::MovieID::Rating::Timestamp` (Unix seconds),
movies.dat `MovieID::Title (Year)::Genre|Genre`, users.dat
`UserID::Gender::Age::Occupation::Zip-code`. CRLF tolerated (one trailing CR).

Parsing never raises on a bad line: every line is either a good row or a rejected
line with its exact bytes (without the `\\n` that ends it) and one reason code, so
nothing read is ever lost and the quarantine can always store it. Values must fit
their columns: ids 1..2^31-1, ages and occupations 0..2^31-1, ratings 1..5,
timestamps in [MIN_TIMESTAMP, MAX_TIMESTAMP). Numbers are plain ASCII digits:
signs, spaces around a field or control bytes are refused, never guessed.

Encoding rule (decided per file, before any line is parsed):
- a UTF-16 or UTF-32 file (byte-order mark, or ASCII text with a NUL in every other
  byte) is refused whole with a SourceError: re-encode it (`iconv -t LATIN1`);
- a file with a UTF-8 byte-order mark, or that is entirely valid UTF-8 and holds
  non-ASCII bytes, is read as UTF-8 (the mark is not part of line 1);
- any other file is read as latin-1 (ML-1M's encoding). In such a file a line whose
  non-ASCII bytes form valid UTF-8 is refused as `mixed_encoding`: stored as latin-1
  it would be mojibake (e.g. "CafÃ©") written over a good title;
- ratings.dat must be ASCII: any other byte refuses the line (`undecodable`).
Control characters (C0, DEL, and C1 U+0080..U+009F, which in a latin-1 file mean a
cp1252 file) refuse the line (`control_chars`).

Repeated ids: in users.dat and movies.dat the first valid line of an id is kept; a
later line with the same values counts as a duplicate, one with other values is
rejected as `duplicate_id_in_file`. Ratings repeating a (user, movie) are resolved by
the ingest: the earliest rating (time, then line) is kept.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

RATINGS_FILE, MOVIES_FILE, USERS_FILE = "ratings.dat", "movies.dat", "users.dat"
SOURCE_FILES = (RATINGS_FILE, MOVIES_FILE, USERS_FILE)

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_ZIP_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ML1M_SHA256 = {
    RATINGS_FILE: "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
    MOVIES_FILE: "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
    USERS_FILE: "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
}

# Reason codes for rejected lines (stored in rejected_rows.reason). Checked in this
# order, so a line gets the first that applies.
EMPTY_LINE = "empty_line"  # nothing but whitespace
CONTROL_CHARS = "control_chars"  # NUL, other C0/C1 controls, DEL (a CR only at the end is fine)
UNDECODABLE = "undecodable"  # not ASCII in ratings.dat; invalid UTF-8 in a UTF-8 file
MIXED_ENCODING = "mixed_encoding"  # a UTF-8 line inside a latin-1 file
FIELD_COUNT = "field_count"
WHITESPACE_IN_FIELD = "whitespace_in_field"  # " 5", "5 ": refused rather than guessed
NON_NUMERIC_ID = "non_numeric_id"  # not plain digits ("+5", "-1", "x", "")
ID_OUT_OF_RANGE = "id_out_of_range"  # 0 or above 2^31-1 (integer columns)
RATING_OUT_OF_RANGE = "rating_out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
BAD_VALUE = "bad_value"  # users.dat / movies.dat field that does not parse or fit
DUPLICATE_ID_IN_FILE = "duplicate_id_in_file"  # users/movies: an earlier line has this id, other values
# Decided by the ingest against the database:
UNKNOWN_USER = "unknown_user"
UNKNOWN_MOVIE = "unknown_movie"
DUPLICATE_IN_FILE = "duplicate_in_file"  # same (user, movie) twice in one input, other values
CONFLICTS_STORED = "conflicts_stored"  # (user, movie) already stored with other values

INT_MAX = 2**31 - 1  # PostgreSQL integer
# Unix seconds accepted as a rating time: 1995-01-01 .. 2100-01-01 (MovieLens began in 1997).
MIN_TIMESTAMP, MAX_TIMESTAMP = 788_918_400, 4_102_444_800
_TOO_BIG = 10**10  # stands for any number of more than 10 significant digits

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
_DIGITS = re.compile(r"[0-9]+\Z")
_DIGITS_B = re.compile(rb"[0-9]+\Z")
_C0_B = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SourceError(Exception):
    """A source folder or file that cannot be used at all (missing, unreadable, wrong encoding)."""


@dataclass
class Parsed:
    """Good rows of one file (with their line_no) and its rejected lines.

    `rejected` has line_no, raw_line (readable text, control bytes as \\xNN), raw_bytes
    (the exact bytes, without the ending newline), reason, and ts (ratings: the line's
    readable timestamp, else NA). `duplicate` counts lines that repeat an earlier line's
    values exactly (users/movies). lines_read = len(rows) + duplicate + len(rejected).
    """

    rows: pd.DataFrame
    rejected: pd.DataFrame
    lines_read: int
    sha256: str
    encoding: str
    duplicate: int
    data: bytes
    starts: np.ndarray
    ends: np.ndarray

    def line_bytes(self, line_no: int) -> bytes:
        """The exact bytes of a line (1-based), without its ending newline."""
        return self.data[self.starts[line_no - 1]: self.ends[line_no - 1]]


@dataclass
class _Source:
    data: bytes
    sha256: str
    encoding: str
    starts: np.ndarray
    ends: np.ndarray


def _read_source(path: Path) -> _Source:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceError(f"missing source file: {path}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read source file {path}: {exc.strerror}") from exc
    sha = hashlib.sha256(data).hexdigest()
    encoding, skip = _detect_encoding(data, path)
    if skip:
        data = data[skip:]
    buf = np.frombuffer(data, np.uint8)
    newlines = _newlines(buf)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    ends = np.concatenate((newlines, [len(buf)])).astype(np.int64)
    if starts[-1] == len(buf):  # the newline that ends the last line (or an empty file)
        starts, ends = starts[:-1], ends[:-1]
    return _Source(data, sha, encoding, starts, ends)


# Threads for the vectorised parse: numpy's comparisons, searches and gathers release the
# GIL, so a large file's blocks parse side by side (1.9x on 2 cores at 25M ratings).
PARSE_THREADS = min(4, os.cpu_count() or 1)
NEWLINE_BLOCK = 1 << 26  # bytes per block of the newline search


def parallel_map(fn, items) -> list:
    """fn over items on PARSE_THREADS threads, results in order."""
    items = list(items)
    if len(items) <= 1 or PARSE_THREADS == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(PARSE_THREADS) as pool:
        return list(pool.map(fn, items))


def _newlines(buf: np.ndarray) -> np.ndarray:
    """Positions of the newline bytes of buf, searched a block at a time on threads."""
    blocks = parallel_map(lambda lo: np.flatnonzero(buf[lo:lo + NEWLINE_BLOCK] == 10) + lo,
                          range(0, len(buf), NEWLINE_BLOCK))
    return np.concatenate(blocks) if blocks else np.empty(0, np.int64)


def _detect_encoding(data: bytes, path: Path) -> tuple[str, int]:
    """The file's encoding and the length of its byte-order mark; SourceError for UTF-16/32."""
    fix = "MovieLens files are latin-1: re-encode it (e.g. iconv -t LATIN1) and ingest again"
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise SourceError(f"{path} is UTF-32 (it starts with a byte-order mark); {fix}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SourceError(f"{path} is UTF-16 (it starts with a byte-order mark); {fix}")
    if _looks_utf16(data):
        raise SourceError(f"{path} looks like UTF-16 (a NUL byte in every other position); {fix}")
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8", len(codecs.BOM_UTF8)
    if data.isascii():
        return "ascii", 0
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1", 0
    return "utf-8", 0  # valid UTF-8 with non-ASCII bytes: latin-1 text almost never is


def _looks_utf16(data: bytes) -> bool:
    # ASCII text in UTF-16 has NUL in (nearly) all bytes of one parity and none of the
    # other; stray NUL bytes in a latin-1 file (bad lines) never look like that.
    sample = np.frombuffer(data[: 1 << 16], np.uint8)
    if len(sample) < 64:
        return False
    half = len(sample) // 2
    even = np.count_nonzero(sample[0: 2 * half: 2] == 0) / half
    odd = np.count_nonzero(sample[1: 2 * half: 2] == 0) / half
    return max(even, odd) > 0.4 and min(even, odd) < 0.05


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def raw_text(line: bytes, encoding: str) -> str:
    """A rejected line as readable text: undecodable and control bytes as \\xNN escapes.
    (raw_bytes keeps the exact bytes; this text is for people.)"""
    body = line[:-1] if line.endswith(b"\r") else line
    if encoding == "latin-1":
        try:
            text = body.decode("utf-8") if not body.isascii() else body.decode("ascii")
        except UnicodeDecodeError:
            text = body.decode("latin-1")
    else:
        text = body.decode("ascii" if encoding == "ascii" else "utf-8", "backslashreplace")
    return _printable(text)


def _int_field(text: str) -> int | None:
    """A field of plain ASCII digits as an int (never int() on thousands of digits), else None."""
    if not _DIGITS.match(text):
        return None
    significant = text.lstrip("0")
    return _TOO_BIG if len(significant) > 10 else int(significant or "0")


def _rejected_frame(items: list[tuple[int, str, bytes, str, int | None]]) -> pd.DataFrame:
    items.sort(key=lambda item: item[0])
    frame = pd.DataFrame(items, columns=["line_no", "raw_line", "raw_bytes", "reason", "ts"])
    return frame.astype({"line_no": "int64", "raw_line": "object", "raw_bytes": "object",
                         "reason": "object", "ts": "Int64"})


# ---------------------------------------------------------------- ratings.dat


def parse_ratings(path: Path) -> Parsed:
    """Parse ratings.dat into user_id, movie_id, rating, ts (Unix s), line_no (1-based).

    Well-formed lines are recognised and converted with numpy over the whole file;
    only the others go through the per-line path that finds their reason.
    """
    src = _read_source(path)
    data, starts, ends = src.data, src.starts, src.ends
    n = len(starts)
    ok, values = _fast_ratings(data, starts, ends)
    rejected: list = []
    slow_good: list = []
    for i in np.flatnonzero(~ok):
        line = data[starts[i]: ends[i]]
        reason, parsed, ts = _rating_line(line[:-1] if line.endswith(b"\r") else line)
        if reason is None:
            slow_good.append((*parsed, i + 1))
        else:
            rejected.append((int(i) + 1, raw_text(line, "ascii"), line, reason, ts))
    u, m, r, t = values
    columns = {"user_id": u, "movie_id": m, "rating": r, "ts": t, "line_no": np.flatnonzero(ok) + 1}
    rows = pd.DataFrame(columns)
    if slow_good:
        extra = pd.DataFrame(slow_good, columns=["user_id", "movie_id", "rating", "ts", "line_no"])
        rows = pd.concat([rows, extra], ignore_index=True).sort_values("line_no", kind="stable", ignore_index=True)
    rows = rows.astype({"user_id": "int64", "movie_id": "int64", "rating": "int16", "ts": "int64", "line_no": "int64"})
    return Parsed(rows, _rejected_frame(rejected), n, src.sha256, src.encoding, 0, data, starts, ends)


def _digit_values(buf: np.ndarray, first: np.ndarray, stop: np.ndarray, width: int) -> np.ndarray:
    """The numbers written in buf[first:stop] (ASCII digits, 1..width of them), vectorised:
    Horner's rule over digit positions, as many steps as the longest field has digits."""
    length = stop - first
    value = np.zeros(len(first), np.int64)
    last = len(buf) - 1
    for k in range(int(min(width, length.max(initial=0)))):
        digit = buf[np.minimum(first + k, last)].astype(np.int64) - 48
        value = np.where(length > k, value * 10 + digit, value)
    return value


def _fast_ratings(data: bytes, starts: np.ndarray, ends: np.ndarray):
    """Which lines are exactly `digits::digits::digit::digits` (+ optional CR) with values
    in range, and (user, movie, rating, ts, index) arrays for the candidate lines."""
    n = len(starts)
    ok = np.zeros(n, bool)
    if n == 0:
        empty = np.empty(0, np.int64)
        return ok, (empty, empty, empty, empty)
    buf = np.frombuffer(data, np.uint8)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    stop = ends - cr
    # Lines holding any byte but digits and ':' (a final CR aside) go to the slow path.
    odd = np.flatnonzero(((buf < 48) | (buf > 58)) & (buf != 10))
    n_odd = np.bincount(np.searchsorted(starts, odd, side="right") - 1, minlength=n) - cr
    colons = np.flatnonzero(buf == 58)
    first_colon = np.searchsorted(colons, starts)
    n_colons = np.searchsorted(colons, stop) - first_colon
    cand = np.flatnonzero((n_odd == 0) & (n_colons == 6))
    c = colons[first_colon[cand, None] + np.arange(6)[None, :]]
    s, e = starts[cand], stop[cand]
    bounds = [(s, c[:, 0]), (c[:, 1] + 1, c[:, 2]), (c[:, 3] + 1, c[:, 4]), (c[:, 5] + 1, e)]
    good = (c[:, 1] == c[:, 0] + 1) & (c[:, 3] == c[:, 2] + 1) & (c[:, 5] == c[:, 4] + 1)
    for (lo, hi), width in zip(bounds, (10, 10, 1, 10)):
        length = hi - lo
        good &= (length >= 1) & (length <= width)
    # Clip so that malformed candidates (already marked bad) cannot index out of range.
    vals = []
    for (lo, hi), width in zip(bounds, (10, 10, 1, 10)):
        hi = np.where(good, hi, lo)
        vals.append(_digit_values(buf, lo, hi, width))
    u, m, r, t = vals
    good &= (u >= 1) & (u <= INT_MAX) & (m >= 1) & (m <= INT_MAX) & (r >= 1) & (r <= 5)
    good &= (t >= MIN_TIMESTAMP) & (t < MAX_TIMESTAMP)
    ok[cand[good]] = True  # cand is ascending, so the values below are in line order
    return ok, (u[good], m[good], r[good], t[good])


def _placement_ts(body: bytes) -> int | None:
    """The timestamp of a ratings line that has four fields and a valid last one: it
    places a rejected line in its interval. None: the line belongs to every interval."""
    fields = body.split(b"::")
    if len(fields) == 4 and _DIGITS_B.match(fields[3]):
        significant = fields[3].lstrip(b"0")
        if len(significant) <= 10:
            value = int(significant or b"0")
            if MIN_TIMESTAMP <= value < MAX_TIMESTAMP:
                return value
    return None


def _rating_line(body: bytes):
    """(reason, values, ts) of a ratings line (without its CR) that the fast path did not
    accept; reason None means the line is good after all (e.g. zero-padded numbers)."""
    ts = _placement_ts(body)
    if not body.strip():
        return EMPTY_LINE, None, ts
    if _C0_B.search(body):
        return CONTROL_CHARS, None, ts
    if not body.isascii():
        return UNDECODABLE, None, ts
    fields = body.decode("ascii").split("::")
    if len(fields) != 4:
        return FIELD_COUNT, None, ts
    if any(f != f.strip() for f in fields):
        return WHITESPACE_IN_FIELD, None, ts
    u, m, r, t = (_int_field(f) for f in fields)
    if u is None or m is None:
        return NON_NUMERIC_ID, None, ts
    if not (1 <= u <= INT_MAX and 1 <= m <= INT_MAX):
        return ID_OUT_OF_RANGE, None, ts
    if r is None or not 1 <= r <= 5:
        return RATING_OUT_OF_RANGE, None, ts
    if t is None or not MIN_TIMESTAMP <= t < MAX_TIMESTAMP:
        return BAD_TIMESTAMP, None, ts
    return None, (u, m, r, t), ts


# ---------------------------------------------------------- users.dat, movies.dat


def _decode_line(body: bytes, encoding: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for a users/movies line without its CR."""
    if _C0_B.search(body):
        return None, CONTROL_CHARS
    if body.isascii():
        return body.decode("ascii"), None
    if encoding == "utf-8":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None, UNDECODABLE
    else:
        try:
            body.decode("utf-8")
            return None, MIXED_ENCODING
        except UnicodeDecodeError:
            text = body.decode("latin-1")
    if _CONTROL.search(text):
        return None, CONTROL_CHARS
    return text, None


def _records(src, split, check, first_line: int = 0):
    """Run split(text) -> (fields, reason) and check(fields) -> (reason, key, values) over
    every line of a users/movies/items file from first_line on. The first valid line of a
    key is kept; exact repeats count as duplicates, others are rejected as duplicate_id_in_file."""
    good, rejected, seen, duplicate = [], [], {}, 0
    for i in range(first_line, len(src.starts)):
        line = src.data[src.starts[i]: src.ends[i]]
        body = line[:-1] if line.endswith(b"\r") else line
        if not body.strip():
            reason = EMPTY_LINE
        else:
            text, reason = _decode_line(body, src.encoding)
            if reason is None:
                fields, reason = split(text)
            if reason is None:
                reason, key, values = check(fields)
                if reason is None:
                    if key not in seen:
                        seen[key] = values
                        good.append((*values, i + 1))
                        continue
                    if seen[key] == values:
                        duplicate += 1
                        continue
                    reason = DUPLICATE_ID_IN_FILE
        rejected.append((i + 1, raw_text(line, src.encoding), line, reason, None))
    return src, good, _rejected_frame(rejected), duplicate


def _dat_fields(n_fields: int):
    """split() for a '::' file of n_fields fields."""
    def split(text: str):
        fields = text.split("::")
        if len(fields) != n_fields:
            return None, FIELD_COUNT
        if any(f != f.strip() for f in fields):
            return None, WHITESPACE_IN_FIELD
        return fields, None
    return split


def _check_id(text: str) -> tuple[str | None, int | None]:
    value = _int_field(text)
    if value is None:
        return NON_NUMERIC_ID, None
    if not 1 <= value <= INT_MAX:
        return ID_OUT_OF_RANGE, None
    return None, value


def _check_user(fields: list[str]):
    uid, gender, age, occ, zip_code = fields
    reason, user_id = _check_id(uid)
    if reason:
        return reason, None, None
    age_v, occ_v = _int_field(age), _int_field(occ)
    if gender not in ("M", "F") or age_v is None or occ_v is None or max(age_v, occ_v) > INT_MAX or not zip_code:
        return BAD_VALUE, None, None
    return None, user_id, (user_id, gender, age_v, occ_v, zip_code)


def _check_movie(fields: list[str]):
    mid, title, genres = fields
    reason, movie_id = _check_id(mid)
    if reason:
        return reason, None, None
    if not title:
        return BAD_VALUE, None, None
    match = _YEAR_IN_TITLE.search(title)
    year = int(match.group(1)) if match else None
    return None, movie_id, (movie_id, title, year, tuple(g for g in genres.split("|") if g))


def parse_users(path: Path) -> Parsed:
    """users.dat into user_id, gender, age, occupation, zip, line_no."""
    src, good, rejected, duplicate = _records(_read_source(path), _dat_fields(5), _check_user)
    rows = pd.DataFrame(good, columns=["user_id", "gender", "age", "occupation", "zip", "line_no"])
    rows = rows.astype({"user_id": "int64", "age": "int64", "occupation": "int64", "line_no": "int64"})
    return Parsed(rows, rejected, len(src.starts), src.sha256, src.encoding, duplicate, src.data, src.starts,
                  src.ends)


def parse_movies(path: Path) -> Parsed:
    """movies.dat into movie_id, title, year (from "(1995)", may be missing), genres (list), line_no."""
    src, good, rejected, duplicate = _records(_read_source(path), _dat_fields(3), _check_movie)
    rows = pd.DataFrame(good, columns=["movie_id", "title", "year", "genres", "line_no"])
    rows["genres"] = rows["genres"].map(list)
    rows = rows.astype({"movie_id": "int64", "line_no": "int64"})
    rows["year"] = rows["year"].astype("Int64")
    return Parsed(rows, rejected, len(src.starts), src.sha256, src.encoding, duplicate, src.data, src.starts,
                  src.ends)


def check_source_dir(source_dir: Path | None) -> Path:
    """The source folder, or SourceError with a message that says what to do."""
    if source_dir is None:
        raise SourceError(
            "no source folder: set RECPIPE_SOURCE_DIR to a folder with ratings.dat, "
            "movies.dat and users.dat, or run `recpipe data download`"
        )
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise SourceError(f"source folder {source_dir} does not exist or is not a folder")
    missing = [name for name in SOURCE_FILES if not (source_dir / name).is_file()]
    if missing:
        raise SourceError(f"source folder {source_dir} lacks {', '.join(missing)}")
    return source_dir


def load_ml1m_frames(source_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings, movies, users) straight from the files, for notebooks and benchmarks.

    ratings gets `rated_at` (UTC) beside `ts`. The pipeline itself reads Postgres.
    """
    source_dir = check_source_dir(source_dir)
    ratings = parse_ratings(source_dir / RATINGS_FILE).rows
    ratings["rated_at"] = pd.to_datetime(ratings["ts"], unit="s", utc=True)
    return ratings, parse_movies(source_dir / MOVIES_FILE).rows, parse_users(source_dir / USERS_FILE).rows


def verify_ml1m(folder: Path) -> None:
    """Raise SourceError unless the three files match the published ML-1M checksums."""
    from recpipe.artifacts import sha256_file

    for name, expected in ML1M_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise SourceError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise SourceError(f"{path}: sha256 {actual} does not match ML-1M's {expected}")


def download_ml1m(dest: Path, url: str = ML1M_URL, timeout_s: float = 60.0) -> Path:
    """Fetch ml-1m.zip, check its MD5 and each file's SHA-256, unpack into dest/ml-1m."""
    dest = Path(dest)
    target = dest / "ml-1m"
    try:
        verify_ml1m(target)
        return target  # already there and intact
    except SourceError:
        pass
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            payload = _read_with_progress(response)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}). Without network access, "
            "copy ml-1m (ratings.dat, movies.dat, users.dat) to this machine and set "
            "RECPIPE_SOURCE_DIR to that folder."
        ) from exc
    md5 = hashlib.md5(payload).hexdigest()
    if md5 != ML1M_ZIP_MD5:
        raise SourceError(f"downloaded archive has MD5 {md5}, expected {ML1M_ZIP_MD5}; refusing it")
    staging = dest / "ml-1m.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for name in (*SOURCE_FILES, "README"):
            (staging / name).write_bytes(archive.read(f"ml-1m/{name}"))
    verify_ml1m(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _read_with_progress(response) -> bytes:
    from tqdm import tqdm

    total = int(response.headers.get("Content-Length") or 0) or None
    chunks = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="ml-1m.zip", disable=not sys.stderr.isatty()) as bar:
        for chunk in iter(lambda: response.read(1 << 16), b""):
            chunks.append(chunk)
            bar.update(len(chunk))
    return b"".join(chunks)
