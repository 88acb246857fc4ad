"""Hub IDs: download through huggingface_hub from a loopback Hub, the offline cache, the
commit in the manifest and report, and file hashes that are not recomputed on every run."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import TINY_SETTINGS
from tamperaudit import models
from tamperaudit.cli import main
from tamperaudit.errors import UserError
from tamperaudit.fileio import read_json

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    """The few Hub endpoints snapshot_download calls, serving one repository from memory."""

    def __init__(self, repo: str, files: dict[str, bytes]) -> None:
        self.repo, self.files, self.requested = repo, files, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, with_body: bool = True) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def _route(self, with_body: bool) -> None:
                hub.requested.append(self.path)
                if not self.path.startswith((f"/api/models/{hub.repo}/", f"/{hub.repo}/")):
                    return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                if "/tree/" in self.path:
                    return self._send(200, json.dumps(hub.tree()).encode(), {"Content-Type": "application/json"})
                if self.path.startswith("/api/models/"):
                    info = {"id": hub.repo, "sha": COMMIT, "siblings": [{"rfilename": name} for name in hub.files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                name = self.path.split("/resolve/", 1)[1].split("/", 1)[1]
                if name not in hub.files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                data = hub.files[name]
                etag = hub.etag(name)
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT}
                if name.endswith(".safetensors"):
                    headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
                self._send(200, data, headers, with_body)

            def do_HEAD(self) -> None:
                self._route(with_body=False)

            def do_GET(self) -> None:
                self._route(with_body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def etag(self, name: str) -> str:
        data = self.files[name]
        lfs = name.endswith((".safetensors", ".bin"))
        return hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()

    def tree(self) -> list[dict[str, object]]:
        entries = []
        for name, data in self.files.items():
            entry: dict[str, object] = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if name.endswith((".safetensors", ".bin")):
                entry["lfs"] = {"oid": self.etag(name), "size": len(data), "pointerSize": 130}
            entries.append(entry)
        return entries


@pytest.fixture()
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TAMPERAUDIT_CACHE", str(tmp_path / "tamperaudit-cache"))
    return cache


def _serve(monkeypatch: pytest.MonkeyPatch, repo: str, files: dict[str, bytes]) -> Iterator[FakeHub]:
    hub = FakeHub(repo, files)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # huggingface_hub reads its endpoint once, at import; point the loaded module at ours too.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield hub
    hub.server.shutdown()


@pytest.fixture()
def fake_hub(tiny_model_dir: Path, hub_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"not to be downloaded: pickle can run code"
    files["modeling_custom.py"] = b"raise SystemExit('remote code ran')"
    yield from _serve(monkeypatch, "acme/tiny-chat", files)


def test_a_hub_id_downloads_safetensors_and_tokenizer_files_only(fake_hub, tiny_model_dir):
    source = models.resolve_source("acme/tiny-chat")
    assert source.kind == "hub" and source.commit == COMMIT and source.folder.name == COMMIT
    downloaded = sorted(p.name for p in source.folder.iterdir())
    assert "pytorch_model.bin" not in downloaded and "modeling_custom.py" not in downloaded
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(downloaded)
    # The hash is the one a plain folder of the same files gets, taken from the Hub's own
    # SHA-256 (the blob's name in the cache), without reading the weights.
    assert source.sha256 == models._folder_hash(tiny_model_dir)
    assert source.describe().commit == COMMIT and "acme/tiny-chat" in source.describe().origin


def test_a_cached_hub_id_works_offline_and_an_uncached_one_is_one_line(fake_hub, hub_env, monkeypatch, capsys):
    online = models.resolve_source("acme/tiny-chat")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub.requested.clear()
    offline = models.resolve_source("acme/tiny-chat")
    assert offline.folder == online.folder and offline.sha256 == online.sha256 and fake_hub.requested == []
    capsys.readouterr()
    assert main(["audit", "--model", "acme/never-downloaded", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "acme/never-downloaded" in err and str(hub_env) in err
    assert "HF_HUB_OFFLINE" in err


def test_a_revision_for_a_local_model_is_an_error(tiny_model_dir, capsys):
    assert main(["audit", "--model", str(tiny_model_dir), "--revision", "v2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "applies to Hub IDs" in err


def test_no_network_falls_back_to_the_cache(fake_hub, monkeypatch):
    online = models.resolve_source("acme/tiny-chat")
    fake_hub.server.shutdown()
    fake_hub.server.server_close()  # the endpoint now refuses connections
    assert models.resolve_source("acme/tiny-chat").folder == online.folder
    with pytest.raises(UserError, match="could not be reached"):
        models.resolve_source("acme/elsewhere")


def test_a_missing_repository_or_a_pickle_only_one_is_refused(hub_env, monkeypatch):
    hub = next(_serve(monkeypatch, "acme/pickled", {"config.json": b"{}", "pytorch_model.bin": b"pickle"}))
    with pytest.raises(UserError, match="no such model"):
        models.resolve_source("acme/absent")
    with pytest.raises(UserError, match="safetensors only"):
        models.resolve_source("acme/pickled")
    assert not any(path.endswith("pytorch_model.bin") and "/resolve/" in path for path in hub.requested)
    hub.server.shutdown()


def test_an_audit_of_a_hub_id_records_the_commit_and_resumes_on_it(fake_hub, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["audit", "--model", "acme/tiny-chat", "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet", *TINY_SETTINGS]
    assert main(argv) == 0
    manifest = read_json(out / "manifest.json")
    assert manifest["inputs"]["model_commit"] == COMMIT
    report = read_json(out / "report.json")
    assert report["model"]["source"]["commit"] == COMMIT and report["model"]["kind"] == "hub"
    assert COMMIT in (out / "report.md").read_text()
    # Resume loads the recorded commit, offline, whatever the branch points at by then.
    (out / "report.json").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["resume", str(out), "--quiet"]) == 0
    assert read_json(out / "report.json")["model"]["source"]["commit"] == COMMIT


def test_folder_hashes_are_remembered_by_path_size_and_modification_time(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TAMPERAUDIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    reads: list[Path] = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path: reads.append(path) or real(path))
    first = models._folder_hash(folder)
    second = models._folder_hash(folder)
    assert first == second and len(reads) == 1  # the second run read nothing
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # same size, new content
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # and a later time
    third = models._folder_hash(folder)
    assert len(reads) == 2 and third != first
