"""The benchmark downloader, against a small HTTP server on loopback."""

import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tamperaudit.cli import main
from tamperaudit.data import load_harmful
from tamperaudit.data import registry
from tamperaudit.errors import UserError

CSV = b"goal,target\nDo a harmful thing one,Sure\nDo a harmful thing two,Sure\n"


@pytest.fixture()
def server(tmp_path: Path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "bench.csv").write_bytes(CSV)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "files"), **kwargs)

        def log_message(self, *args):  # keep the test's stderr for tamperaudit's own output
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _pin(monkeypatch, url: str, sha256: str) -> None:
    bench = replace(registry.BENCHMARKS["advbench"], url=url, sha256=sha256)
    monkeypatch.setitem(registry.BENCHMARKS, "advbench", bench)


def test_fetch_downloads_verifies_and_is_then_usable_by_name(server, monkeypatch, isolated_cache, capsys):
    _pin(monkeypatch, f"{server}/bench.csv", hashlib.sha256(CSV).hexdigest())
    with pytest.raises(UserError, match="run `tamperaudit data fetch advbench`"):
        load_harmful("advbench")  # never fetched silently
    assert main(["data", "fetch", "advbench"]) == 0
    assert "SHA-256 verified" in capsys.readouterr().out
    data = load_harmful("advbench")
    assert len(data) == 2 and data.name == "advbench" and data.sha256 == hashlib.sha256(CSV).hexdigest()


def test_a_wrong_hash_keeps_nothing(server, monkeypatch, isolated_cache, capsys):
    _pin(monkeypatch, f"{server}/bench.csv", "0" * 64)
    assert main(["data", "fetch", "advbench"]) == 2
    assert "nothing was kept" in capsys.readouterr().err
    assert not list((isolated_cache / "benchmarks" / "advbench").iterdir())


def test_a_failed_download_is_one_clear_line(server, monkeypatch, isolated_cache, capsys):
    _pin(monkeypatch, f"{server}/missing.csv", "0" * 64)
    assert main(["data", "fetch", "advbench"]) == 2
    err = capsys.readouterr().err
    assert "download from" in err and len(err.strip().splitlines()) == 1


def test_data_list_shows_sets_sizes_and_hashes(capsys, isolated_cache):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "harmful: 330 rows, sha256" in out and "advbench (--harmful)" in out and "not fetched" in out
