"""MovieLens-1M source files: read, validate, download.

Format: `::`-separated; ratings.dat `UserID::MovieID::Rating::Timestamp` (Unix seconds),
movies.dat `MovieID::Title (Year)::Genre|Genre`, users.dat
`UserID::Gender::Age::Occupation::Zip-code`. Latin-1; CRLF tolerated.

Parsing never raises on a bad line: it returns the good rows and, for every other
line, the raw line and a reason code, so that nothing read is ever lost.
"""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
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

# Reason codes for rejected lines (stored in rejected_rows.reason).
EMPTY_LINE = "empty_line"
UNDECODABLE = "undecodable"
FIELD_COUNT = "field_count"
NON_NUMERIC_ID = "non_numeric_id"
RATING_OUT_OF_RANGE = "rating_out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
BAD_VALUE = "bad_value"  # users.dat / movies.dat field that does not parse
UNKNOWN_USER = "unknown_user"
UNKNOWN_MOVIE = "unknown_movie"
DUPLICATE_IN_FILE = "duplicate_in_file"  # same (user, movie) twice in one input, other values
CONFLICTS_STORED = "conflicts_stored"  # (user, movie) already stored with other values

# Unix seconds accepted as a rating time: 1995-01-01 .. 2100-01-01 (MovieLens began in 1997).
MIN_TIMESTAMP, MAX_TIMESTAMP = 788_918_400, 4_102_444_800

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class SourceError(Exception):
    """A source folder or file that cannot be used at all (missing, unreadable)."""


@dataclass
class Parsed:
    """Good rows of one file and its rejected lines (line_no, raw_line, reason)."""

    rows: pd.DataFrame
    rejected: pd.DataFrame
    lines_read: int
    sha256: str


def _rejected_frame(items: list[tuple[int, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(sorted(items), columns=["line_no", "raw_line", "reason"])
    return frame.astype({"line_no": "int64", "raw_line": "object", "reason": "object"})


def _read_lines(path: Path) -> tuple[list[bytes], str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SourceError(f"missing source file: {path}") from exc
    except OSError as exc:
        raise SourceError(f"cannot read source file {path}: {exc.strerror}") from exc
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    return lines, hashlib.sha256(data).hexdigest()


def _raw(line: bytes) -> str:
    # Raw lines are stored as text: undecodable bytes become \x.. escapes.
    return line.decode("latin-1") if line.isascii() else line.decode("ascii", "backslashreplace")


def parse_ratings(path: Path) -> Parsed:
    """Parse ratings.dat into user_id, movie_id, rating, ts (Unix s), line_no (1-based)."""
    lines, sha = _read_lines(path)
    users = np.empty(len(lines), dtype=np.int64)
    movies = np.empty(len(lines), dtype=np.int64)
    ratings = np.empty(len(lines), dtype=np.int16)
    stamps = np.empty(len(lines), dtype=np.int64)
    line_nos = np.empty(len(lines), dtype=np.int64)
    rejected: list[tuple[int, str, str]] = []
    n = 0
    for i, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r")
        try:
            u, m, r, t = line.split(b"::")
            u, m, r, t = int(u), int(m), int(r), int(t)
            if u > 0 and m > 0 and 1 <= r <= 5 and MIN_TIMESTAMP <= t < MAX_TIMESTAMP and line.isascii() and b"_" not in line:
                users[n], movies[n], ratings[n], stamps[n], line_nos[n] = u, m, r, t, i
                n += 1
                continue
        except ValueError:
            pass
        rejected.append((i, _raw(line), _rating_reason(line)))
    rows = pd.DataFrame(
        {
            "user_id": users[:n],
            "movie_id": movies[:n],
            "rating": ratings[:n],
            "ts": stamps[:n],
            "line_no": line_nos[:n],
        }
    )
    return Parsed(rows, _rejected_frame(rejected), len(lines), sha)


def _rating_reason(line: bytes) -> str:
    """Why a ratings line was refused (the slow path, for bad lines only)."""
    if not line.strip():
        return EMPTY_LINE
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return UNDECODABLE
    fields = text.split("::")
    if len(fields) != 4:
        return FIELD_COUNT
    u, m, r, t = (f.strip() for f in fields)
    if not (u.isdigit() and m.isdigit()) or int(u) <= 0 or int(m) <= 0:
        return NON_NUMERIC_ID
    if not r.isdigit() or not 1 <= int(r) <= 5:
        return RATING_OUT_OF_RANGE
    if not t.lstrip("-").isdigit() or not MIN_TIMESTAMP <= int(t) < MAX_TIMESTAMP:
        return BAD_TIMESTAMP
    return FIELD_COUNT  # whitespace around fields: refuse rather than guess


def _latin1_records(path: Path, n_fields: int, rejected: list):
    """(line_no, text, fields) of each line with n_fields `::` fields; the others go to
    `rejected` with their reason. Returns (records, lines_read, sha256)."""
    lines, sha = _read_lines(path)
    records = []
    for i, line in enumerate(lines, start=1):
        text = line.rstrip(b"\r").decode("latin-1")
        if not text.strip():
            rejected.append((i, text, EMPTY_LINE))
            continue
        fields = text.split("::")
        if len(fields) != n_fields:
            rejected.append((i, text, FIELD_COUNT))
            continue
        records.append((i, text, fields))
    return records, len(lines), sha


def parse_users(path: Path) -> Parsed:
    """users.dat into user_id, gender, age, occupation, zip."""
    good, rejected = [], []
    records, n_lines, sha = _latin1_records(path, 5, rejected)
    for i, text, (uid, gender, age, occ, zip_code) in records:
        if not uid.isdigit() or int(uid) <= 0:
            rejected.append((i, text, NON_NUMERIC_ID))
        elif gender not in ("M", "F") or not age.isdigit() or not occ.isdigit() or not zip_code:
            rejected.append((i, text, BAD_VALUE))
        else:
            good.append((int(uid), gender, int(age), int(occ), zip_code))
    rows = pd.DataFrame(good, columns=["user_id", "gender", "age", "occupation", "zip"])
    return Parsed(rows, _rejected_frame(rejected), n_lines, sha)


def parse_movies(path: Path) -> Parsed:
    """movies.dat into movie_id, title, year (from "(1995)", may be missing), genres (list)."""
    good, rejected = [], []
    records, n_lines, sha = _latin1_records(path, 3, rejected)
    for i, text, (mid, title, genres) in records:
        if not mid.isdigit() or int(mid) <= 0:
            rejected.append((i, text, NON_NUMERIC_ID))
            continue
        match = _YEAR_IN_TITLE.search(title)
        year = int(match.group(1)) if match else None
        good.append((int(mid), title, year, [g for g in genres.split("|") if g]))
    rows = pd.DataFrame(good, columns=["movie_id", "title", "year", "genres"])
    rows["year"] = rows["year"].astype("Int64")
    return Parsed(rows, _rejected_frame(rejected), n_lines, sha)


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
