"""MovieLens files: parsing users/movies, checksums, download refusals."""
from __future__ import annotations

import http.server
import io
import shutil
import threading
import zipfile

import pytest

from recpipe.source import (
    SourceError, download_ml1m, parse_movies, parse_users, verify_ml1m,
)


def test_users_and_movies_reject_bad_lines_with_reasons(tmp_path):
    (tmp_path / "users.dat").write_bytes(b"1::F::1::10::48067\r\n\nx::M::1::1::1\n2::Q::1::1::1\n3::M::25\n")
    users = parse_users(tmp_path / "users.dat")
    assert users.rows["user_id"].tolist() == [1]
    assert users.rejected["reason"].tolist() == ["empty_line", "non_numeric_id", "bad_value", "field_count"]
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's\n2::Café (untitled)::Drama\n::X::Y\n".encode("latin-1"))
    movies = parse_movies(tmp_path / "movies.dat")
    assert movies.rows["year"].tolist()[0] == 1995 and movies.rows["year"].isna().tolist() == [False, True]
    assert movies.rows["title"].tolist()[1] == "Café (untitled)"
    assert movies.rows["genres"].tolist()[0] == ["Animation", "Children's"]
    assert movies.rejected["reason"].tolist() == ["non_numeric_id"]


def test_ml1m_checksums(ml1m_dir, tmp_path):
    verify_ml1m(ml1m_dir)
    copy = tmp_path / "ml-1m"
    shutil.copytree(ml1m_dir, copy)
    with open(copy / "users.dat", "ab") as fh:
        fh.write(b"9999::M::1::1::1\n")
    with pytest.raises(SourceError, match="users.dat: sha256"):
        verify_ml1m(copy)


@pytest.fixture
def fake_grouplens():
    """A local HTTP server that serves a zip which is not ML-1M."""
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        for name in ("ratings.dat", "movies.dat", "users.dat", "README"):
            archive.writestr(f"ml-1m/{name}", "1::1::5::978300760\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = payload.getvalue()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ml-1m.zip"
    server.shutdown()


def test_download_refuses_an_archive_with_the_wrong_md5(fake_grouplens, tmp_path):
    with pytest.raises(SourceError, match="MD5"):
        download_ml1m(tmp_path, url=fake_grouplens)
    assert not (tmp_path / "ml-1m").exists()


def test_download_without_network_says_what_to_do(tmp_path):
    with pytest.raises(SourceError, match="RECPIPE_SOURCE_DIR"):
        download_ml1m(tmp_path, url="http://127.0.0.1:9/ml-1m.zip", timeout_s=2)


# --- issue #10: hostile bytes and lengths never raise, every line gets a reason ---

from recpipe.source import parse_ratings  # noqa: E402


def test_ratings_lines_beyond_int_and_python_limits_are_rejected_not_raised(tmp_path):
    lines = [
        b"99999999999999999999::1::5::978300760",  # beyond int64: OverflowError on main
        b"2147483648::1::5::978300760",  # fits int64, not the integer column
        b"1::2::5::" + b"9" * 5000,  # past Python's 4,300-digit int() limit
        b"1::3::5::978300760",
        b"1::4::\x00::978300760",
        b"1::5:: 5::978300760",  # "refused rather than guessed"
        b"1::6::+5::978300760",
        b"+1::7::5::978300760",
        b"0::8::5::978300760",
        b"1::9::5::-978300760",
    ]
    (tmp_path / "ratings.dat").write_bytes(b"\n".join(lines) + b"\n")
    parsed = parse_ratings(tmp_path / "ratings.dat")
    assert parsed.rows["line_no"].tolist() == [4]
    assert parsed.rejected["reason"].tolist() == [
        "id_out_of_range", "id_out_of_range", "bad_timestamp", "control_chars", "whitespace_in_field",
        "rating_out_of_range", "non_numeric_id", "id_out_of_range", "bad_timestamp"]
    assert parsed.rejected["raw_bytes"].tolist() == [line for i, line in enumerate(lines) if i != 3]
    assert parsed.rejected["raw_line"][3] == "1::4::\\x00::978300760"  # storable text


def test_users_and_movies_hostile_lines_are_rejected(tmp_path):
    (tmp_path / "users.dat").write_bytes(
        b"99999999999999999999::M::1::1::1\n1::M::25::" + b"7" * 5000 + b"::1\n2::F::1\x00::1::1\n"
        b"3::M::1::1::12345\n3::M::1::1::12345\n3::F::1::1::12345\n4::M:: 1::1::1\n")
    users = parse_users(tmp_path / "users.dat")
    assert users.rows["user_id"].tolist() == [3] and users.rows["gender"].tolist() == ["M"]  # the first line kept
    assert users.duplicate == 1  # the identical repeat
    assert users.rejected["reason"].tolist() == [
        "id_out_of_range", "bad_value", "control_chars", "duplicate_id_in_file", "whitespace_in_field"]
    assert users.lines_read == len(users.rows) + users.duplicate + len(users.rejected)
    (tmp_path / "movies.dat").write_bytes(
        b"1::A (1990)::Drama\n1::B (1991)::Drama\n3000000000::C (1992)::Drama\n4::\x7f (1993)::Drama\n")
    movies = parse_movies(tmp_path / "movies.dat")
    assert movies.rows["title"].tolist() == ["A (1990)"]
    assert movies.rejected["reason"].tolist() == ["duplicate_id_in_file", "id_out_of_range", "control_chars"]


def test_utf16_file_is_refused_whole_with_a_clear_message(tmp_path):
    text = "1::Toy Story (1995)::Animation\n2::Café (1990)::Drama\n" * 5
    for name, data in (("bom.dat", text.encode("utf-16")), ("nobom.dat", text.encode("utf-16-le"))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SourceError, match="UTF-16.*latin-1"):
            parse_movies(tmp_path / name)
    (tmp_path / "ratings.dat").write_bytes("1::1::5::978300760\n".encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        parse_ratings(tmp_path / "ratings.dat")


def test_utf8_movies_are_decoded_and_utf8_lines_in_latin1_files_refused(tmp_path):
    text = "1::Café au Lait (1993)::Comedy\n2::Misérables, Les (1995)::Drama\n"
    (tmp_path / "utf8.dat").write_bytes(text.encode("utf-8"))
    (tmp_path / "latin1.dat").write_bytes(text.encode("latin-1"))
    utf8, latin1 = parse_movies(tmp_path / "utf8.dat"), parse_movies(tmp_path / "latin1.dat")
    assert (utf8.encoding, latin1.encoding) == ("utf-8", "latin-1")
    assert utf8.rows["title"].tolist() == latin1.rows["title"].tolist() == ["Café au Lait (1993)",
                                                                          "Misérables, Les (1995)"]
    # One UTF-8 line among latin-1 ones would be mojibake ("CafÃ©"): refused.
    (tmp_path / "mixed.dat").write_bytes(text.encode("latin-1") + "3::Été (1990)::Drama\n".encode("utf-8"))
    mixed = parse_movies(tmp_path / "mixed.dat")
    assert mixed.rows["movie_id"].tolist() == [1, 2]
    assert mixed.rejected["reason"].tolist() == ["mixed_encoding"]
    assert mixed.rejected["raw_bytes"][0] == "3::Été (1990)::Drama".encode("utf-8")
