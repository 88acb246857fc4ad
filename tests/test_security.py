"""Nothing executes code from inputs, and nothing goes on the network unless a command asks."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETTINGS
from tamperaudit.cli import main
from tamperaudit.data import registry
from tamperaudit.errors import UserError


def tiny_audit(model: Path, out: Path) -> list[str]:
    return ["audit", "--model", str(model), "--out", str(out), "--budgets", "0,1", "--quiet", *TINY_SETTINGS]


def test_an_audit_never_unpickles_and_never_opens_a_socket(tiny_model_dir, tmp_path, monkeypatch, isolated_cache):
    loads = []
    original_load = torch.load

    def guarded_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load without weights_only=True")
        return original_load(*args, **kwargs)

    def no_network(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network connection attempted to {address}")
        return original_connect(self, address, *args)

    original_connect = socket.socket.connect
    monkeypatch.setattr(torch, "load", guarded_load)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    assert main(tiny_audit(tiny_model_dir, tmp_path / "run")) == 0
    assert all(flag is True for flag in loads)


def test_a_chat_template_is_rendered_in_a_sandbox(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    # a template that reaches for Python internals, as a template injection would
    config["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (model / name).unlink(missing_ok=True)
    assert main(tiny_audit(model, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chat template" in err and "unsafe" in err, err


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "advbench/../../x", "..", ""])
def test_fetch_names_cannot_leave_the_cache(name, isolated_cache):
    with pytest.raises(UserError, match="not a known benchmark"):
        registry.fetch(name)
    assert not isolated_cache.exists() or not any(isolated_cache.rglob("*"))


class _Serve(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def served(monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake = registry.Benchmark("fake", "harmful", f"http://127.0.0.1:{server.server_address[1]}/f.csv",
                              "0" * 64, "f.csv", "none")
    monkeypatch.setitem(registry.BENCHMARKS, "fake", fake)
    yield fake
    server.shutdown()


def test_a_download_is_verified_before_use_and_capped_in_size(served, isolated_cache, monkeypatch):
    _Serve.body = b"prompt\nsomething\n"
    with pytest.raises(UserError, match="not the pinned"):  # the pinned hash is zeros: refused, nothing kept
        registry.fetch("fake")
    assert not list(isolated_cache.rglob("f.csv*"))
    monkeypatch.setattr(registry, "MAX_DOWNLOAD_BYTES", 8)
    with pytest.raises(UserError, match="more than any benchmark here; nothing was kept"):
        registry.fetch("fake")
    assert not list(isolated_cache.rglob("f.csv*"))
