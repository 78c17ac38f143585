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
