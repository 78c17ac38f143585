"""Sources beyond ML-1M (issue #12): the ML-25M/32M and generic CSV readers, format
detection, the download's checksum, and ingest -> nightly -> published lists for an
ML-25M-format folder and a generic one (real PostgreSQL)."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from recpipe import formats, generate, pipeline
from recpipe.cli import build_parser
from recpipe.config import Settings
from recpipe.features import FieldEncoders, derive_fields
from recpipe.ingest import ingest
from recpipe.source import SourceError

UTC = timezone.utc
T = 978300760  # a valid rating time (2000-12-31)


def write(folder, name, data: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


# ------------------------------------------------------------------- readers

ML_RATINGS = [
    b"userId,movieId,rating,timestamp",
    b"1,1,4.0,978300760",
    b"1,2,3.5,978300761\r",  # CRLF
    b"2,1,0.5,978300762",
    b"2,2,5,978300763",  # whole stars without ".0"
    b"3,1,04.50,978300764",  # odd but exact: the slow path accepts it
    b'3,2,"2.0",978300765',  # quoted number: CSV quoting, accepted
    b"",
    b"1,3,5.5,978300766",
    b"1,4,3.7,978300767",
    b"x,5,3.0,978300768",
    b"1,6,3.0",
    b"1,7,4.0,12",
    b"1,8, 4.0,978300769",
    b"1,9,4.\x00,978300770",
    "1,10,4.0,978300771é".encode("latin-1"),
    b'1,11,"4.0,978300772',
    b"0,12,4.0,978300773",
]
ML_RATINGS_REASONS = ["empty_line", "rating_out_of_range", "rating_out_of_range", "non_numeric_id", "field_count",
                      "bad_timestamp", "whitespace_in_field", "control_chars", "undecodable", "bad_csv",
                      "id_out_of_range"]

ML_MOVIES = (
    'movieId,title,genres\n'
    '1,Toy Story (1995),Adventure|Animation|Children\n'
    '2,"American President, The (1995)",Comedy|Drama|Romance\n'
    '3,"Say ""Hi"", Then (2001) ",(no genres listed)\n'
    '4,"Unclosed, title (1999),Drama\n'
    'x,Nobody (1990),Drama\n'
    '5,Two fields\n'
    '1,Toy Story (1995),Adventure|Animation|Children\n'  # exact repeat: a duplicate
    '2,Other title (1995),Drama\n'
    '6,Café (2003),Drama\n'
).encode("utf-8")


def test_ml25m_ratings_every_line_stored_or_quarantined_with_its_bytes(tmp_path):
    path = write(tmp_path, "ratings.csv", b"\n".join(ML_RATINGS) + b"\n")
    parsed = formats.parse_csv_ratings(path, formats.ML_RATINGS_HEADER)
    rows = parsed.rows
    assert rows["line_no"].tolist() == [2, 3, 4, 5, 6, 7]
    assert rows["rating_x2"].tolist() == [8, 7, 1, 10, 9, 4]
    assert rows["rating"].tolist() == [4, 3, 1, 5, 4, 2]  # half stars rounded down, 0.5 -> 1
    assert rows["ts"].tolist() == [T, T + 1, T + 2, T + 3, T + 4, T + 5]
    assert parsed.rejected["reason"].tolist() == ML_RATINGS_REASONS
    assert parsed.rejected["raw_bytes"].tolist() == ML_RATINGS[7:]
    assert parsed.rejected["line_no"].tolist() == list(range(8, 19))
    # The header is checked, not counted: every other line is stored or rejected.
    assert parsed.lines_read == len(ML_RATINGS) - 1 == len(rows) + len(parsed.rejected)
    assert parsed.rejected["ts"].tolist()[1:3] == [T + 6, T + 7]  # placed in their interval


@pytest.mark.parametrize("pass_lines", [None, 7])
def test_csv_ratings_fast_path_agrees_with_the_line_by_line_rules(tmp_path, monkeypatch, pass_lines):
    """Seeded near-valid and random lines: the vectorised path stores exactly what the
    per-line rules accept, with their values; every other line is rejected with the
    per-line reason and its exact bytes. Also in passes of 7 lines (a pass boundary
    every few lines, as at 25M lines in passes of FAST_PARSE_LINES)."""
    import numpy as np

    if pass_lines:
        monkeypatch.setattr(formats, "FAST_PARSE_LINES", pass_lines)

    rng = np.random.default_rng(12)
    alphabet = np.frombuffer(b"0123456789,,,..5\"\r \x00\xffx-", np.uint8)
    lines = [formats.GENERIC_RATINGS_HEADER.encode()]
    for i in range(3000):
        good = f"{rng.integers(1, 99)},{rng.integers(1, 99)},{rng.choice(['4', '3.5', '0.5', '5.0'])},{T + i}"
        kind = i % 3
        if kind == 0:
            lines.append(good.encode())
        elif kind == 1:  # one byte changed, inserted or dropped
            b = bytearray(good.encode())
            at = int(rng.integers(len(b)))
            op = int(rng.integers(3))
            if op == 0:
                b[at] = int(rng.choice(alphabet))
            elif op == 1:
                b.insert(at, int(rng.choice(alphabet)))
            else:
                del b[at]
            lines.append(bytes(b))
        else:
            lines.append(bytes(rng.choice(alphabet, size=int(rng.integers(0, 30)))).replace(b"\r", b""))
    lines += [b"1.5,2,345,978300760", b"1,2,345,9783007.6", b"1,2,3.,978300760", b"1,2,.5,978300760",
              b"1,2,4.5.,978300760", b",1,4,978300760", b"1,,4,978300760", b"1,2,4,", b"1,2,10,978300760",
              b"1,2,0,978300760", b"1,2,0.0,978300760", b"1,2,5.5,978300760", b"1,2,4.5,978300760\r",
              b"1,2,4.5,97830076\r0", b"12345678901,2,4,978300760", b"1,2,4,04102444800"]
    parsed = formats.parse_csv_ratings(write(tmp_path, "ratings.csv", b"\n".join(lines) + b"\n"),
                                       formats.GENERIC_RATINGS_HEADER)
    stored = {row.line_no: (row.user_id, row.movie_id, row.rating_x2, row.ts) for row in parsed.rows.itertuples()}
    rejected = {row.line_no: (row.reason, row.raw_bytes) for row in parsed.rejected.itertuples()}
    assert not stored.keys() & rejected.keys() and len(stored) + len(rejected) == parsed.lines_read == 3016
    for line_no, line in enumerate(lines[1:], start=2):
        reason, values, _ = formats._csv_rating_line(line.removesuffix(b"\r"))
        if reason is None:
            assert stored[line_no] == values, line
        else:
            assert rejected[line_no] == (reason, line), line
    assert 1000 < len(stored) < 2500  # both paths were exercised


def test_csv_header_is_checked(tmp_path):
    with pytest.raises(SourceError, match="expected the header 'userId,movieId,rating,timestamp'"):
        formats.parse_csv_ratings(write(tmp_path, "ratings.csv", b"1,1,4.0,978300760\n"), formats.ML_RATINGS_HEADER)
    with pytest.raises(SourceError, match="empty"):
        formats.parse_csv_ratings(write(tmp_path, "ratings.csv", b""), formats.ML_RATINGS_HEADER)
    bom = write(tmp_path, "ratings.csv", b"\xef\xbb\xbfuser_id,item_id,rating,timestamp\r\n1,1,4,978300760\r\n")
    parsed = formats.parse_csv_ratings(bom, formats.GENERIC_RATINGS_HEADER)
    assert parsed.rows["rating_x2"].tolist() == [8] and parsed.lines_read == 1
    with pytest.raises(SourceError, match="header"):
        formats.parse_csv_items(write(tmp_path, "movies.csv", b"id,title,genres\n1,A,B\n"), "movieId",
                                formats.ML_MOVIES_HEADER)


def test_ml25m_movies_quoted_titles_and_bad_lines(tmp_path):
    movies = formats.parse_csv_items(write(tmp_path, "movies.csv", ML_MOVIES), "movieId", formats.ML_MOVIES_HEADER)
    assert movies.encoding == "utf-8"
    assert movies.rows["title"].tolist() == ["Toy Story (1995)", "American President, The (1995)",
                                             'Say "Hi", Then (2001) ', "Café (2003)"]
    assert movies.rows["year"].tolist() == [1995, 1995, 2001, 2003]
    assert movies.rows["genres"].tolist() == [["Adventure", "Animation", "Children"], ["Comedy", "Drama", "Romance"],
                                              [], ["Drama"]]
    assert movies.rejected["reason"].tolist() == ["bad_csv", "non_numeric_id", "field_count", "duplicate_id_in_file"]
    assert movies.rejected["raw_bytes"][0] == b'4,"Unclosed, title (1999),Drama'
    assert movies.duplicate == 1
    assert movies.lines_read == 9 == len(movies.rows) + movies.duplicate + len(movies.rejected)


def test_generic_users_and_items_take_any_attribute_columns(tmp_path):
    users = formats.parse_csv_users(write(tmp_path, "users.csv", (
        b"user_id,zip,gender\n1,01234,F\n2,,\n3,99,X\n4 ,1,M\n5,\\N,M\n")))
    assert users.rows["user_id"].tolist() == [1, 2, 5]
    assert users.rows["zip"].tolist() == ["01234", None, "\\N"] and users.rows["gender"].tolist() == ["F", None, "M"]
    assert users.rows["age"].isna().all()
    assert users.rejected["reason"].tolist() == ["bad_value", "whitespace_in_field"]
    items = formats.parse_csv_items(write(tmp_path, "items.csv", b"item_id,title\n7,Seven\n8,\n"))
    assert items.rows["title"].tolist() == ["Seven", None] and items.rows["genres"].tolist() == [None, None]
    with pytest.raises(SourceError, match="expected 'user_id' first"):
        formats.parse_csv_users(write(tmp_path, "users.csv", b"user_id,shoe_size\n1,9\n"))


# ---------------------------------------------------------------- detection


def tiny(folder, fmt: str, *, users: bool = True, ratings: int = 3000, seed: int = 3):
    """A small generated data set (recpipe.generate) in fmt; 2000-01-01 .. 2001-01-01."""
    spec = generate.Spec(ratings=ratings, users=60, items=400, start="2000-01-01", end="2001-01-01", seed=seed)
    generate.write(folder, spec, fmt, users_file=users)
    return folder


def test_format_detection(tmp_path, synthetic_dir):
    assert formats.resolve(synthetic_dir).format == "ml-1m"
    ml25 = write(tmp_path / "a", "ratings.csv", b"userId,movieId,rating,timestamp\n").parent
    with pytest.raises(SourceError, match="lacks movies.csv"):
        formats.resolve(ml25)
    write(ml25, "movies.csv", b"movieId,title,genres\n")
    assert formats.resolve(ml25).format == "ml-25m" and formats.resolve(ml25).users is None
    write(ml25, "README.txt", b"Summary\n=======\nThis dataset (ml-32m) describes 5-star rating ...\n")
    assert formats.resolve(ml25).format == "ml-32m"
    generic = write(tmp_path / "g", "ratings.csv", b"user_id,item_id,rating,timestamp\n").parent
    src = formats.resolve(generic)
    assert (src.format, src.items, src.users) == ("generic", None, None)
    write(generic, "users.csv", b"user_id\n")
    assert formats.resolve(generic).users == generic / "users.csv"
    with pytest.raises(SourceError, match=r"\(ml-25m\) lacks movies.csv"):  # the folder is generic
        formats.resolve(generic, "ml-25m")
    write(generic, "movies.csv", b"movieId,title,genres\n")
    with pytest.raises(SourceError, match="expected the header 'userId,movieId"):
        formats.resolve(generic, "ml-25m").parse_ratings()
    odd = write(tmp_path / "o", "ratings.csv", b"u,i,r,t\n").parent
    with pytest.raises(SourceError, match="neither ML-25M/32M"):
        formats.resolve(odd)
    parquet = write(tmp_path / "p", "ratings.parquet", b"PAR1").parent
    with pytest.raises(SourceError, match="Parquet.*not supported"):
        formats.resolve(parquet)
    with pytest.raises(SourceError, match="unknown source format"):
        formats.resolve(generic, "ml-100k")
    assert Settings.from_env({"RECPIPE_SOURCE_FORMAT": "generic"}).source_format == "generic"
    assert Settings.from_env({}).source_format == "auto"
    with pytest.raises(ValueError, match="RECPIPE_SOURCE_FORMAT"):
        Settings.from_env({"RECPIPE_SOURCE_FORMAT": "csv"})
    args = build_parser().parse_args(["ingest", "--all", "--format", "ml-25m"])
    assert args.format == "ml-25m"


def test_generated_data_is_readable_in_both_csv_formats(tmp_path):
    for fmt in ("ml-25m", "generic"):
        src = formats.resolve(tiny(tmp_path / fmt, fmt, ratings=500))
        ratings, items = src.parse_ratings(), src.parse_items()
        assert src.format == fmt and ratings.rejected.empty and items.rejected.empty
        assert len(ratings.rows) == ratings.lines_read >= 500
        assert (src.parse_users() is None) == (fmt == "ml-25m")
    half = formats.resolve(tmp_path / "ml-25m").parse_ratings().rows
    assert (half["rating_x2"] % 2 == 1).any()  # ML-25M's half stars


# ------------------------------------------------------------------- download


def zip_of(name: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for short, data in files.items():
            archive.writestr(f"{name}/{short}", data)
    return buf.getvalue()


def test_download_checksum_verification_on_a_local_archive(tmp_path):
    payload = zip_of("ml-25m", {"ratings.csv": b"userId,movieId,rating,timestamp\n", "movies.csv": b"m\n"})
    md5 = hashlib.md5(payload).hexdigest()
    assert formats.parse_md5_file(f"{md5}  ml-25m.zip\n".encode(), "ml-25m.zip") == md5
    assert formats.parse_md5_file(f"MD5 (ml-25m.zip) = {md5.upper()}\n".encode(), "ml-25m.zip") == md5
    with pytest.raises(SourceError, match="MD5 .* expected 0+; refusing"):
        formats.unpack_verified(payload, "0" * 32, "ml-25m", tmp_path)
    assert not (tmp_path / "ml-25m").exists()
    folder = formats.unpack_verified(payload, md5, "ml-25m", tmp_path)
    assert (folder / "movies.csv").read_bytes() == b"m\n" and formats.resolve(folder).format == "ml-25m"


@pytest.fixture
def fake_grouplens():
    """A local HTTP server with ml-25m.zip and a .md5 file (files[...] may be swapped)."""
    payload = zip_of("ml-25m", {"ratings.csv": b"userId,movieId,rating,timestamp\n", "movies.csv": b"m\n"})
    files = {"/ml-25m.zip": payload, "/ml-25m.zip.md5": f"{hashlib.md5(payload).hexdigest()}  ml-25m.zip\n".encode()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


def test_download_checks_the_published_md5_and_the_archive(fake_grouplens, tmp_path):
    base, files = fake_grouplens
    good = hashlib.md5(files["/ml-25m.zip"]).hexdigest()
    # The published MD5 differs from the pinned one (here the real ML-25M's): refused before downloading.
    with pytest.raises(SourceError, match="publishes .* expects 6b51fb2759a8657d3bfcbfc42b592ada"):
        formats.download_dataset("ml-25m", tmp_path, base_url=base)
    files["/ml-25m.zip.md5"] = b"d41d8cd98f00b204e9800998ecf8427e  ml-25m.zip\n"
    with pytest.raises(SourceError, match="refusing"):  # an archive whose MD5 is not the published one
        formats.download_dataset("ml-25m", tmp_path, base_url=base, expected_md5="d41d8cd98f00b204e9800998ecf8427e")
    assert not (tmp_path / "ml-25m").exists()
    files["/ml-25m.zip.md5"] = f"{good}  ml-25m.zip\n".encode()
    folder = formats.download_dataset("ml-25m", tmp_path, base_url=base, expected_md5=good)
    assert (folder / "ratings.csv").is_file() and (folder / ".verified_md5").read_text().strip() == good
    with pytest.raises(SourceError, match="RECPIPE_SOURCE_DIR"):
        formats.download_dataset("ml-32m", tmp_path, base_url="http://127.0.0.1:9", timeout_s=2)


# ---------------------------------------------------------------- ingest, features


def count(engine, sql):
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def test_ingest_ml25m_folder_without_users(engine, tmp_path):
    folder = tmp_path / "ml"
    write(folder, "ratings.csv", b"\n".join(ML_RATINGS + [b"9,99,4.0,978300790"]) + b"\n")
    write(folder, "movies.csv", ML_MOVIES)
    report = ingest(engine, folder)
    assert report.reconciles and (report.inserted, report.duplicate) == (6, 0)
    assert report.reasons == {**{r: ML_RATINGS_REASONS.count(r) for r in ML_RATINGS_REASONS}, "unknown_movie": 1}
    assert set(report.files) == {"ratings.csv", "movies.csv"}
    assert report.files["movies.csv"]["rejected"] == 4 and report.users_changed == 3  # users 1, 2, 3 implied
    with engine.connect() as conn:
        users = conn.exec_driver_sql("SELECT user_id, gender, age, occupation, zip FROM users ORDER BY 1").all()
        stored = conn.exec_driver_sql("SELECT rating, rating_x2 FROM ratings ORDER BY source_line").all()
        quarantined = conn.exec_driver_sql(
            "SELECT source_file, line_no, raw_bytes, reason FROM rejected_rows ORDER BY source_file, line_no").all()
        fmt = conn.exec_driver_sql("SELECT source_format FROM ingest_batches").scalar()
        titles = conn.exec_driver_sql("SELECT title FROM movies WHERE movie_id = 2").scalar()
    assert [tuple(u) for u in users] == [(1, None, None, None, None), (2, None, None, None, None),
                                         (3, None, None, None, None)]
    assert [tuple(r) for r in stored] == [(4, 8), (3, 7), (1, 1), (5, 10), (4, 9), (2, 4)]
    assert fmt == "ml-25m" and titles == "American President, The (1995)"
    by_file = {(f, n): (bytes(raw), reason) for f, n, raw, reason in quarantined}
    assert by_file[("ratings.csv", 19)] == (b"9,99,4.0,978300790", "unknown_movie")
    assert by_file[("movies.csv", 5)] == (b'4,"Unclosed, title (1999),Drama', "bad_csv")
    assert all(by_file[("ratings.csv", n)][0] == ML_RATINGS[n - 1] for n in range(8, 19))
    again = ingest(engine, folder)  # idempotent
    assert (again.inserted, again.duplicate, again.users_changed, again.movies_changed) == (0, 6, 0, 0)
    # A changed half star of a stored rating conflicts (the exact value is compared).
    (folder / "ratings.csv").write_bytes((folder / "ratings.csv").read_bytes().replace(b"1,1,4.0,", b"1,1,4.5,"))
    assert ingest(engine, folder).reasons.get("conflicts_stored") == 1


def test_ingest_generic_without_items_and_encoders_use_what_is_there(engine, tmp_path):
    folder = tmp_path / "g"
    write(folder, "ratings.csv", b"user_id,item_id,rating,timestamp\n1,10,5,978300760\n2,11,2,978300761\n"
                                 b"3,10,4,978300762\n")
    write(folder, "users.csv", b"user_id,gender,age\n1,F,25\n2,M,\n")
    report = ingest(engine, folder, fmt="generic")
    assert (report.inserted, report.reasons) == (2, {"unknown_user": 1})  # users.csv lists the users
    assert report.movies_changed == 2 and count(engine, "SELECT count(*) FROM movies WHERE title IS NULL") == 2
    from recpipe.db import read_movies, read_ratings, read_users

    users, movies = read_users(engine), read_movies(engine)
    assert users["gender"].tolist() == ["F", "M"] and users["zip"].tolist() == [None, None]
    assert movies["genres"].tolist() == [None, None]
    frame = derive_fields(read_ratings(engine), movies, users)
    encoders = FieldEncoders().fit(frame)
    assert encoders.fields == ("user_id", "movie_id", "rating_year", "rating_month", "rating_decade", "gender", "age")
    assert encoders.unused_fields == ["movie_decade", "movie_year", "genre1", "genre2", "genre3", "occupation", "zip"]
    assert encoders.transform(frame).shape == (2, 7) and len(encoders.field_dims) == 7


# ------------------------------------------------------------------- end to end

NIGHT = datetime(2000, 12, 1, tzinfo=UTC)
FAST = {"autoint": {"batch_size": 64, "learning_rate": 0.01, "epochs": 2, "patience": 1, "embed_dim": 8,
                    "dnn_units": [16]}}
EASY_GATE = {"min_test_users": 3, "must_beat_baseline": False, "floors": {"autoint": {"auc": 0.0}}}
USER_ATTRIBUTES = ["gender", "age", "occupation", "zip"]


@pytest.mark.parametrize("fmt", ["ml-25m", "generic"])
def test_csv_folder_ingest_nightly_publishes_lists(fmt, engine, database_url, tmp_path):
    folder = tiny(tmp_path / fmt, fmt)
    settings = Settings(database_url=database_url, home=tmp_path / "home", source_dir=folder)
    report = pipeline.ingest_interval(settings, None, None)
    assert report["reconciles"] and report["rejected"] == 0 and report["inserted"] > 0
    plan = pipeline.make_plan(settings, NIGHT, models=("popularity", "autoint"), model_overrides=FAST,
                              gate_overrides=EASY_GATE)
    result = pipeline.run_nightly(settings, plan)
    assert {p["model"] for p in result["publication"]["published"]} == {"popularity", "autoint"}
    with engine.connect() as conn:
        per_model = dict(conn.exec_driver_sql(
            "SELECT model, count(*) FROM recommendations_current GROUP BY model").all())
        known_users = conn.exec_driver_sql(
            "SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < %(t)s", {"t": NIGHT}).scalar()
        stats = conn.exec_driver_sql(
            "SELECT data_stats FROM model_runs WHERE model = 'autoint' AND phase = 'gated'").scalar()
        half_stars = conn.exec_driver_sql("SELECT count(*) FROM ratings WHERE mod(rating_x2, 2) = 1").scalar()
    assert (half_stars > 0) == (fmt == "ml-25m")
    assert known_users > 0 and per_model == {"popularity": 10 * known_users, "autoint": 10 * known_users}
    unused = USER_ATTRIBUTES if fmt == "ml-25m" else []  # ML-25M has no user attributes
    assert stats["unused_fields"] == unused and not set(unused) & set(stats["fields"])
    assert len(stats["fields"]) == len(stats["field_dims"]) == 14 - len(unused)
