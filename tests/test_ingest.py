"""Ingest against a real PostgreSQL: counts, idempotence, intervals, quarantine."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from recpipe import ingest as ingest_mod
from recpipe.ingest import ingest

UTC = timezone.utc
TABLE_DIGEST = (
    "SELECT count(*) AS n, md5(string_agg(concat_ws(':', user_id, movie_id, rating,"
    " extract(epoch FROM rated_at)::bigint, source_line), ',' ORDER BY user_id, movie_id)) AS digest FROM ratings"
)


def digest(engine):
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(TABLE_DIGEST).one())


def count(engine, table):
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def test_ingest_all_then_again_inserts_nothing(engine, synthetic_dir):
    first = ingest(engine, synthetic_dir)
    lines = len((synthetic_dir / "ratings.dat").read_bytes().splitlines())
    assert (first.lines_read, first.inserted, first.duplicate, first.rejected) == (lines, lines, 0, 0)
    assert count(engine, "users") == 120 and count(engine, "movies") == 90
    before = digest(engine)
    second = ingest(engine, synthetic_dir)
    assert (second.inserted, second.duplicate, second.rejected) == (0, lines, 0)
    assert second.users_changed == 0 and second.movies_changed == 0
    assert digest(engine) == before
    with engine.connect() as conn:
        ledger = conn.exec_driver_sql(
            "SELECT lines_read, inserted, duplicate, rejected FROM ingest_batches ORDER BY batch_id"
        ).all()
    assert [tuple(r) for r in ledger] == [(lines, lines, 0, 0), (lines, 0, lines, 0)]


def test_consecutive_intervals_equal_one_full_ingest(engine, synthetic_dir):
    ingest(engine, synthetic_dir)
    full = digest(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches CASCADE")
    cuts = [None, datetime(2000, 6, 1, tzinfo=UTC), datetime(2000, 9, 1, tzinfo=UTC), None]
    reports = [ingest(engine, synthetic_dir, a, b) for a, b in zip(cuts, cuts[1:])]
    assert all(r.inserted > 0 for r in reports)
    assert sum(r.inserted for r in reports) == full[0]
    # Re-running the middle interval changes nothing.
    again = ingest(engine, synthetic_dir, cuts[1], cuts[2])
    assert again.inserted == 0 and again.duplicate == reports[1].inserted
    assert digest(engine) == full


def test_empty_interval_is_refused(engine, synthetic_dir):
    when = datetime(2000, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty interval"):
        ingest(engine, synthetic_dir, when, when)


BAD_LINES = {
    "": "empty_line",
    "1::2::3": "field_count",
    "1::2::3::978300760::9": "field_count",
    "x::2::3::978300760": "non_numeric_id",
    "1::y::3::978300760": "non_numeric_id",
    "1::3::9::978300760": "rating_out_of_range",
    "1::4::0::978300760": "rating_out_of_range",
    "1::5::3::yesterday": "bad_timestamp",
    "1::6::3::12": "bad_timestamp",
    "9999::2::3::978300760": "unknown_user",
    "1::9999::3::978300760": "unknown_movie",
}


@pytest.fixture
def corrupted_dir(synthetic_dir, tmp_path):
    """A copy of the generated data with every kind of bad line appended."""
    dest = tmp_path / "corrupt"
    shutil.copytree(synthetic_dir, dest)
    good = (synthetic_dir / "ratings.dat").read_bytes()
    first_user, first_movie, rating, ts = good.splitlines()[0].decode().split("::")
    other_rating = 1 if rating != "1" else 2
    pairs = {tuple(line.split(b"::")[:2]) for line in good.splitlines()}
    free_user, free_movie = next((u, m) for u in range(1, 121) for m in range(1, 91)
                                 if (str(u).encode(), str(m).encode()) not in pairs)
    extra = [line.encode() for line in BAD_LINES]
    extra += [
        b"1::7::3::978300760\xff\xfe",  # undecodable bytes
        f"{first_user}::{first_movie}::{rating}::{ts}".encode(),  # exact repeat: a duplicate
        f"{first_user}::{first_movie}::{other_rating}::{ts}".encode(),  # same key, other rating
        f"{free_user}::{free_movie}::4::978300760\r".encode(),  # CRLF line: fine
    ]
    (dest / "ratings.dat").write_bytes(good + b"\n".join(extra) + b"\n")
    return dest


def test_corrupted_file_reconciles_with_reason_codes(engine, corrupted_dir):
    report = ingest(engine, corrupted_dir)
    n_good = len((corrupted_dir / "ratings.dat").read_bytes().splitlines()) - len(BAD_LINES) - 4
    assert report.lines_read == n_good + len(BAD_LINES) + 4
    assert report.reconciles
    expected = {}
    for reason in BAD_LINES.values():
        expected[reason] = expected.get(reason, 0) + 1
    expected["undecodable"] = 1
    expected["duplicate_in_file"] = 1
    assert report.reasons == expected
    assert report.duplicate == 1  # the exact repeat is the stored rating, not a new one
    assert report.inserted == n_good + 1  # + the CRLF line
    with engine.connect() as conn:
        stored = dict(conn.exec_driver_sql("SELECT reason, count(*) FROM rejected_ratings GROUP BY reason").all())
        raw = conn.exec_driver_sql("SELECT raw_line FROM rejected_ratings WHERE reason = 'undecodable'").scalar_one()
    assert stored == expected
    assert raw == "1::7::3::978300760\\xff\\xfe"

    # A second run records nothing twice and still reconciles; the in-file repeat
    # now meets its stored twin.
    again = ingest(engine, corrupted_dir)
    expected_again = {**expected, "conflicts_stored": 1}
    del expected_again["duplicate_in_file"]
    assert again.inserted == 0 and again.reconciles and again.reasons == expected_again
    assert count(engine, "rejected_rows") == sum(expected.values())


def test_conflict_with_stored_rating_is_rejected(engine, synthetic_dir, tmp_path):
    ingest(engine, synthetic_dir)
    dest = tmp_path / "changed"
    shutil.copytree(synthetic_dir, dest)
    lines = (dest / "ratings.dat").read_text().splitlines()
    u, m, r, t = lines[0].split("::")
    lines[0] = f"{u}::{m}::{1 if r != '1' else 2}::{t}"
    (dest / "ratings.dat").write_text("\n".join(lines) + "\n")
    report = ingest(engine, dest)
    assert report.reasons == {"conflicts_stored": 1}
    assert report.duplicate == len(lines) - 1


def test_failure_leaves_nothing_half_written(engine, synthetic_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_mod, "_classify_and_insert", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(engine, synthetic_dir)
    for table in ("users", "movies", "ratings", "ingest_batches", "rejected_rows"):
        assert count(engine, table) == 0, table


def test_bulk_path_keeps_foreign_keys(engine, synthetic_dir, monkeypatch):
    monkeypatch.setattr(ingest_mod, "BULK_INSERT_ROWS", 10)
    ingest(engine, synthetic_dir)
    with engine.connect() as conn:
        fks = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ratings'::regclass AND contype = 'f'"
        ).scalar_one()
    assert fks == 3
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO ratings VALUES (99999, 1, 3, now(), 1, 1)")


def _ratings_indexes(engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return {name: (oid, definition) for name, oid, definition in conn.exec_driver_sql(
            "SELECT c.relname, i.indexrelid::bigint, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'ratings'::regclass").all()}


def test_bulk_load_rebuilds_the_indexes_only_when_it_outgrows_the_table(engine, synthetic_dir, tmp_path,
                                                                         monkeypatch):
    before = _ratings_indexes(engine)
    assert {"ratings_pkey", "ratings_rated_at"} <= set(before)
    monkeypatch.setattr(ingest_mod, "BULK_INSERT_ROWS", 10)
    first = ingest(engine, synthetic_dir)  # into an empty table: indexes dropped and built again
    after = _ratings_indexes(engine)
    assert {n: d for n, (_, d) in after.items()} == {n: d for n, (_, d) in before.items()}
    assert all(after[n][0] != before[n][0] for n in before), "built again, under the same definitions"
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM ratings").scalar_one()
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ratings'::regclass AND contype IN ('p', 'f')"
        ).scalar_one() == 4
    assert stored == first.inserted
    with pytest.raises(sa.exc.IntegrityError):  # the primary key is back
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO ratings SELECT * FROM ratings LIMIT 1")
    # A later batch smaller than the table keeps the indexes in place.
    lines = (synthetic_dir / "ratings.dat").read_text().splitlines()
    later = tmp_path / "later"
    shutil.copytree(synthetic_dir, later)
    (later / "ratings.dat").write_text("\n".join(
        f"{u}::{m}::{r}::{t}" for u, m, r, t in (line.split("::") for line in lines[:30])
        for u, m, r, t in [(u, m, r, str(int(t) + 1))]) + "\n")
    report = ingest(engine, later)
    assert report.lines_read == 30 and report.inserted == 0  # all conflicts with the stored ratings
    assert _ratings_indexes(engine) == after


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "recpipe.cli", *args], capture_output=True, text=True, env=env)


def test_cli_missing_source_is_one_clear_line(tmp_path, database_url):
    import os

    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_SOURCE_DIR": str(tmp_path / "nope"),
           "RECPIPE_HOME": str(tmp_path / "home")}
    done = run_cli("ingest", "--all", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_ingest_prints_reconciliation(engine, synthetic_dir, database_url, tmp_path):
    import os

    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_SOURCE_DIR": str(synthetic_dir),
           "RECPIPE_HOME": str(tmp_path / "home")}
    done = run_cli("ingest", "--start", "2000-01-01", "--end", "2000-07-01", env=env)
    assert done.returncode == 0, done.stderr
    assert "read " in done.stdout and "(reconciled)" in done.stdout


@pytest.mark.ml1m
def test_full_movielens_ingest(engine, ml1m_dir):
    cuts = [datetime(2000, 4, 25, tzinfo=UTC), datetime(2000, 6, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC), None]
    reports = [ingest(engine, ml1m_dir, a, b) for a, b in zip(cuts, cuts[1:])]
    assert all(r.rejected == 0 and r.reconciles for r in reports)
    by_interval = digest(engine)
    assert by_interval[0] == 1_000_209
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(DISTINCT user_id), count(DISTINCT movie_id) FROM ratings").one() == (
            6040, 3706)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches CASCADE")
    full = ingest(engine, ml1m_dir)
    assert (full.inserted, full.rejected) == (1_000_209, 0)
    assert digest(engine) == by_interval
    assert ingest(engine, ml1m_dir).inserted == 0


# --- issue #10: one bad line never makes a file un-ingestable; the quarantine loses nothing ---

from datetime import timedelta  # noqa: E402

from recpipe.source import SourceError  # noqa: E402


def _with_extra(synthetic_dir, dest, **extra: bytes):
    """A copy of the generated data with bytes appended to some files."""
    shutil.copytree(synthetic_dir, dest)
    for name, data in extra.items():
        path = dest / f"{name}.dat"
        path.write_bytes(path.read_bytes() + data)
    return dest


def quarantine(engine, batch_id=None):
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT source_file, line_no, reason, raw_bytes, resolved_by_batch FROM rejected_rows"
            " WHERE :b IS NULL OR batch_id = :b ORDER BY source_file, line_no, batch_id"), {"b": batch_id}).all()


def test_hostile_lines_are_quarantined_byte_for_byte(engine, synthetic_dir, tmp_path):
    ratings = [b"99999999999999999999::1::5::978300760", b"2147483648::1::5::978300760",
               b"1::2::5::" + b"9" * 5000, b"1::3::5::978300760\x00", b"\x00"]
    users = [b"99999999999999999999::M::1::1::1", b"7\x00::M::1::1::1"]
    movies = [b"4294967296::X (1990)::Drama", b"\x00::\x00::\x00"]
    dest = _with_extra(synthetic_dir, tmp_path / "hostile", ratings=b"\n".join(ratings) + b"\n",
                       users=b"\n".join(users) + b"\n", movies=b"\n".join(movies) + b"\n")
    report = ingest(engine, dest)  # main: OverflowError / ValueError / COPY fails on 0x00
    assert report.reconciles and report.rejected == len(ratings)
    assert report.reasons == {"id_out_of_range": 2, "bad_timestamp": 1, "control_chars": 2}
    for name, lines in (("ratings.dat", ratings), ("users.dat", users), ("movies.dat", movies)):
        counts = report.files[name]
        assert counts["lines_read"] == counts["stored"] + counts["duplicate"] + counts["rejected"]
        stored = [bytes(r.raw_bytes) for r in quarantine(engine) if r.source_file == name]
        assert stored == lines, name
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM ratings WHERE user_id > 120").scalar_one() == 0


def test_a_line_without_timestamp_does_not_break_daily_ingests(engine, synthetic_dir, tmp_path):
    dest = _with_extra(synthetic_dir, tmp_path / "nul", ratings=b"1::1::\x00\n")
    day = datetime(2000, 6, 1, tzinfo=UTC)
    reports = [ingest(engine, dest, day + timedelta(days=i), day + timedelta(days=i + 1)) for i in range(5)]
    assert all(r.reconciles and r.reasons.get("control_chars") == 1 for r in reports)
    with engine.connect() as conn:
        # Its bytes are stored once; each batch that read it has its sighting.
        assert conn.exec_driver_sql("SELECT count(*) FROM rejected_rows").scalar_one() == 1
        sightings = conn.exec_driver_sql(
            "SELECT b.batch_id, b.rejected, count(s.line_no) FROM ingest_batches b"
            " LEFT JOIN rejected_sightings s ON s.batch_id = b.batch_id AND s.source_file = 'ratings.dat'"
            " GROUP BY b.batch_id ORDER BY b.batch_id").all()
    assert [(r[1], r[2]) for r in sightings] == [(r.rejected, r.rejected) for r in reports]


def test_a_different_bad_line_at_the_same_place_is_recorded(engine, synthetic_dir, tmp_path):
    first = _with_extra(synthetic_dir, tmp_path / "a", ratings=b"bad line one\n")
    second = _with_extra(synthetic_dir, tmp_path / "b", ratings=b"bad line two\n")
    one, two = ingest(engine, first), ingest(engine, second)
    rows = quarantine(engine)
    assert [bytes(r.raw_bytes) for r in rows] == [b"bad line one", b"bad line two"]  # main: only the first
    assert [r.line_no for r in rows] == [rows[0].line_no] * 2
    assert one.rejected == two.rejected == 1


def test_stale_rejects_are_resolved_when_a_later_batch_stores_the_line(engine, synthetic_dir, tmp_path):
    empty_users = tmp_path / "empty-users"
    shutil.copytree(synthetic_dir, empty_users)
    (empty_users / "users.dat").write_bytes(b"")
    first = ingest(engine, empty_users)
    assert first.inserted == 0 and first.reasons == {"unknown_user": first.lines_read}
    second = ingest(engine, synthetic_dir)
    assert second.inserted == first.lines_read
    with engine.connect() as conn:
        open_rows, resolved_by = conn.exec_driver_sql(
            "SELECT count(*) FILTER (WHERE resolved_by_batch IS NULL), array_agg(DISTINCT resolved_by_batch)"
            " FROM rejected_rows").one()
    assert open_rows == 0 and resolved_by == [second.batch_id]  # main: all still there, unmarked


def test_utf8_movies_file_neither_mojibake_nor_overwrites(engine, synthetic_dir, tmp_path):
    latin1 = tmp_path / "latin1"
    shutil.copytree(synthetic_dir, latin1)
    movies = (latin1 / "movies.dat").read_bytes().decode("latin-1").replace("Movie 1 (", "Café 1 (")
    (latin1 / "movies.dat").write_bytes(movies.encode("latin-1"))
    utf8 = tmp_path / "utf8"
    shutil.copytree(latin1, utf8)
    (utf8 / "movies.dat").write_bytes(movies.encode("utf-8"))
    ingest(engine, latin1)
    report = ingest(engine, utf8)
    assert report.movies_changed == 0 and report.files["movies.dat"]["rejected"] == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT title FROM movies WHERE movie_id = 1").scalar_one().startswith("Café 1 (")
        assert conn.exec_driver_sql(
            "SELECT encoding FROM ingest_batch_files WHERE batch_id = %s AND source_file = 'movies.dat'",
            (report.batch_id,)).scalar_one() == "utf-8"


def test_utf16_file_is_refused_before_anything_is_written(engine, synthetic_dir, tmp_path):
    dest = tmp_path / "utf16"
    shutil.copytree(synthetic_dir, dest)
    (dest / "users.dat").write_bytes((synthetic_dir / "users.dat").read_text("latin-1").encode("utf-16"))
    with pytest.raises(SourceError, match="users.dat is UTF-16"):
        ingest(engine, dest)
    for table in ("users", "movies", "ratings", "ingest_batches", "rejected_rows"):
        assert count(engine, table) == 0, table


def test_duplicate_ids_keep_the_first_line(engine, synthetic_dir, tmp_path):
    dest = _with_extra(synthetic_dir, tmp_path / "dups", users=b"1::F::56::1::99999\n1::M::1::0::10000\n",
                       movies=b"1::Other Title (1999)::Comedy\n")
    first_user = (synthetic_dir / "users.dat").read_bytes().splitlines()[0]
    report = ingest(engine, dest)
    assert report.files["users.dat"]["reasons"] == {"duplicate_id_in_file": 1}
    assert report.files["users.dat"]["duplicate"] == 1  # the exact repeat of line 1
    assert report.files["movies.dat"]["reasons"] == {"duplicate_id_in_file": 1}
    with engine.connect() as conn:
        user = conn.exec_driver_sql("SELECT user_id, gender, age, occupation, zip FROM users WHERE user_id = 1").one()
        title = conn.exec_driver_sql("SELECT title FROM movies WHERE movie_id = 1").scalar_one()
    assert "::".join(map(str, user)).encode() == first_user
    assert title.startswith("Movie 1 (")


# ------------------------------------------------- a first load against the staged path

def _messy_folders(root, corrupted_dir):
    """Sources that reach every outcome: ML-1M with bad lines; ML-25M without users (users
    implied, an unknown movie, identical and differing repeats); generic without items
    (items implied, an unknown user)."""
    from recpipe import generate

    spec = generate.Spec(ratings=2000, users=40, items=300, start="2000-01-01", end="2001-01-01", seed=11)
    ml25m, generic = root / "ml25m", root / "generic"
    generate.write(ml25m, spec, "ml-25m", users_file=False)
    generate.write(generic, spec, "generic")
    (generic / "items.csv").unlink()
    for folder, extra in ((ml25m, [b"3,99999,4.0,978300790"]), (generic, [b"99999,3,4,978300790"])):
        lines = (folder / "ratings.csv").read_bytes().splitlines()
        u, m, r, t = lines[5].split(b",")
        other = b"1" if r not in (b"1", b"1.0") else b"2"
        extra += [lines[5], b",".join([u, m, other, t]), lines[9]]
        (folder / "ratings.csv").write_bytes(b"\n".join(lines + extra) + b"\n")
    return {"ml-1m": corrupted_dir, "ml-25m": ml25m, "generic": generic}


def _everything(engine) -> dict:
    queries = {
        "ratings": "SELECT user_id, movie_id, rating, rating_x2, rated_at, batch_id, source_line FROM ratings"
                   " ORDER BY user_id, movie_id",
        "users": "SELECT * FROM users ORDER BY user_id",
        "movies": "SELECT * FROM movies ORDER BY movie_id",
        "sightings": "SELECT batch_id, source_file, line_no, reason, recorded_batch FROM rejected_sightings"
                     " ORDER BY source_file, line_no",
        "rejected": "SELECT source_file, line_no, batch_id, raw_bytes, reason FROM rejected_rows"
                    " ORDER BY source_file, line_no",
        "files": "SELECT source_file, lines_read, stored, duplicate, rejected FROM ingest_batch_files ORDER BY 1",
    }
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.exec_driver_sql(sql).all()] for name, sql in queries.items()}


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-25m", "generic"])
def test_first_load_path_stores_and_quarantines_exactly_what_the_staged_path_does(
        fmt, engine, corrupted_dir, tmp_path, monkeypatch):
    folder = _messy_folders(tmp_path, corrupted_dir)[fmt]
    taken = []
    for name in ("_first_load", "_classify_and_insert"):
        original = getattr(ingest_mod, name)
        monkeypatch.setattr(ingest_mod, name,
                            lambda *a, _f=original, _n=name, **k: taken.append(_n) or _f(*a, **k))
    results = {}
    for path, bulk_rows, empty in (("first_load", 10, None), ("staged", 10**9, None),
                                   ("staged_bulk", 10, False)):
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches, movies, users"
                                 " RESTART IDENTITY CASCADE")
        monkeypatch.setattr(ingest_mod, "BULK_INSERT_ROWS", bulk_rows)
        if empty is not None:
            monkeypatch.setattr(ingest_mod, "_ratings_empty", lambda conn: empty)
        report = ingest(engine, folder).to_dict()
        report.pop("seconds")
        results[path] = (report, _everything(engine))
    assert taken == ["_first_load", "_classify_and_insert", "_classify_and_insert"]
    first, staged, bulk = results["first_load"], results["staged"], results["staged_bulk"]
    reasons = first[0]["reasons"]
    assert {"duplicate_in_file", "unknown_user" if fmt != "ml-25m" else "unknown_movie"} <= set(reasons)
    assert first[0]["duplicate"] >= 1 and first[0]["inserted"] == len(first[1]["ratings"]) > 1000
    assert first == staged
    assert first == bulk
