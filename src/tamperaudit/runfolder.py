"""The run folder: every stage reads its inputs from it and writes its outputs to it.

``manifest.json`` records the inputs' hashes and each stage's state. A stage is
done when its outputs exist and the manifest says ``done``; writes are atomic,
so a run killed at any moment resumes from the last finished stage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tamperaudit import __version__, faults
from tamperaudit.errors import DamagedFile, UserError
from tamperaudit.fileio import atomic_write_json, atomic_write_text, jsonl_text, parse_records, read_record, read_text, sha256_text
from tamperaudit.records import (
    ChatDescription, Manifest, RunInputs, Sample, SearchResult, Session, StageEntry, StageMetrics, TrainState,
)

MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the process working on the run; it names that process's pid
CONFIG = "config.toml"
BASELINE = "baseline"
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
DONE, RUNNING = "done", "running"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def budget_folder_name(budget: int) -> str:
    return f"budget-{budget:06d}"


class RunFolder:
    """A run folder. ``writes=False`` is the view of a process that is not the main one when
    ``accelerate launch`` started several: it reads what the main process wrote, and its
    writes do nothing, so that one process alone writes each file."""

    def __init__(self, root: Path, writes: bool = True) -> None:
        self.root = Path(root)
        self.writes = writes
        self._lock: int | None = None  # the open lock file while this process holds the folder

    # --- creation and checks ---------------------------------------------------------

    @staticmethod
    def holder(root: Path) -> str | None:
        """The pid of the process that holds this run folder now, or None."""
        lock = Path(root) / LOCK
        if not lock.is_file():
            return None
        descriptor = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(descriptor)
        return None

    @staticmethod
    def kind_of(root: Path) -> str | None:
        """'audit' or 'eval' for a run folder (read without checking the rest), else None."""
        try:
            manifest = json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return manifest.get("kind") if isinstance(manifest, dict) else None

    @staticmethod
    def check_free(root: Path) -> None:
        """A new run needs an absent or empty folder; say what to do with the run that is there."""
        root = Path(root)
        if root.exists() and (not root.is_dir() or any(p.name != LOCK for p in root.iterdir())):
            holder = RunFolder.holder(root) if root.is_dir() else None
            if holder is not None:
                raise UserError(f"{root}: run folder in use by pid {holder}; wait for that process to finish, or pick another --out")
            kind = RunFolder.kind_of(root)
            if kind == "audit":
                raise UserError(f"{root} already holds an audit; finish it with `tamperaudit resume {root}` or pick another --out")
            if kind is not None:
                raise UserError(f"{root} already holds a tamperaudit {kind} run; pick another --out")
            raise UserError(f"{root} exists and is not an empty folder; pick another --out")

    @classmethod
    def create(cls, root: Path, config_text: str, inputs: RunInputs, kind: str = "audit",
               chat: ChatDescription | None = None) -> "RunFolder":
        root = Path(root)
        cls.check_free(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {root} ({error.strerror or error}); pick another --out") from None
        run = cls(root)
        run.lock()
        cls.check_free(root)  # again, under the lock: another audit may have started here meanwhile
        atomic_write_text(root / CONFIG, config_text)
        run._write_manifest(Manifest(tool_version=__version__, kind=kind, created=now(), inputs=inputs, stages={}, sessions=[],
                                     chat=chat))
        return run

    @classmethod
    def open(cls, root: Path, writes: bool = True) -> "RunFolder":
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise UserError(f"{root}: not a tamperaudit run folder (no {MANIFEST})")
        return cls(root, writes)

    def lock(self) -> None:
        """Hold this run folder for the rest of the process, or stop in one line if another
        process holds it. The operating system releases the lock when its holder exits, however
        it exits, so a lock left by a killed process is taken over without a stale-lock check."""
        descriptor = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise UserError(
                f"{self.root}: run folder in use by pid {holder}; wait for that process to finish or stop it"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
        self._lock = descriptor  # kept open: closing it would release the lock

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the lock file stays; the next holder overwrites its pid
            self._lock = None

    def check_resumable(self, kind: str, version: str) -> None:
        """Refuse to resume a folder of another kind, or one written by another tamperaudit version
        (its stages' outputs may differ in form or meaning from what this version writes)."""
        manifest = self.manifest()
        if manifest.kind != kind:
            raise UserError(f"{self.root} holds a tamperaudit {manifest.kind} run, not an {kind}; only audits can be resumed")
        if manifest.tool_version != version:
            raise UserError(
                f"{self.root} was started by tamperaudit {manifest.tool_version}, this is {version}; "
                "start a new run with this version instead of resuming that one"
            )

    def add_session(self, seconds: float, outcome: str, processes: int = 1) -> None:
        """Record one session's wall-clock time on this run (loading included), how it ended,
        and how many processes worked in it."""
        if not self.writes:
            return
        manifest = self.manifest()
        session = Session(ended=now(), seconds=round(seconds, 3), outcome=outcome, processes=processes)
        self._write_manifest(dataclasses.replace(manifest, sessions=[*manifest.sessions, session]))

    def check_inputs(self, **expected: Any) -> None:
        """Refuse to resume when the model, data or config changed since the run began
        (``expected``: values of ``RunInputs`` fields, by name)."""
        recorded = self.manifest().inputs
        for key, value in expected.items():
            if getattr(recorded, key) != value:
                raise UserError(
                    f"{self.root}: '{key}' changed since this run began (hash differs); "
                    "start a new run instead of resuming this one"
                )

    # --- manifest ------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        try:
            return read_record(self.root / MANIFEST, Manifest)
        except DamagedFile as error:
            raise DamagedFile(f"{error}; without its manifest the run cannot be resumed: start a new run") from None

    def _write_manifest(self, manifest: Manifest) -> None:
        atomic_write_json(self.root / MANIFEST, manifest.to_json())

    def stage(self, stage: str) -> StageEntry | None:
        return self.manifest().stages.get(stage)

    def stage_state(self, stage: str) -> str | None:
        entry = self.stage(stage)
        return entry.state if entry is not None else None

    def mark(self, stage: str, state: str, seconds: float | None = None, error: str | None = None,
             search: SearchResult | None = None) -> None:
        """Record a stage's state (and, when given, its seconds, error or search result)."""
        if not self.writes:
            return
        manifest = self.manifest()
        entry = manifest.stages.get(stage) or StageEntry(state=state)
        given = {"seconds": seconds, "error": error, "search": search}
        entry = dataclasses.replace(
            entry, state=state, **{k: v for k, v in given.items() if v is not None}, **{f"{state}_at": now()}
        )
        self._write_manifest(dataclasses.replace(manifest, stages={**manifest.stages, stage: entry}))
        faults.checkpoint(f"{state}-{stage}")

    # --- stage outputs -------------------------------------------------------------------

    def folder(self, stage: str) -> Path:
        path = self.root / stage
        if self.writes:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str) -> bool:
        """Done: the manifest says so and the metrics file exists."""
        return self.stage_state(stage) == DONE and (self.root / stage / METRICS).is_file()

    def write_results(self, stage: str, samples: list[Sample], metrics: StageMetrics) -> None:
        """Samples first, metrics last: metrics.json marks the stage's outputs complete."""
        if not self.writes:
            return
        folder = self.folder(stage)
        text = jsonl_text(sample.to_json() for sample in samples)
        atomic_write_text(folder / SAMPLES, text)
        faults.checkpoint(f"write-{stage}")
        # the samples' digest, so that a file cut at a line boundary is caught, not under-counted
        manifest = self.manifest()
        entry = dataclasses.replace(manifest.stages.get(stage) or StageEntry(state=RUNNING), samples_sha256=sha256_text(text))
        self._write_manifest(dataclasses.replace(manifest, stages={**manifest.stages, stage: entry}))
        atomic_write_json(folder / METRICS, metrics.to_json())

    def check_intact(self) -> None:
        """Every finished stage's files as their stage wrote them, or one line naming the first
        that is not: checked before a resume spends minutes loading the model."""
        for stage, entry in self.manifest().stages.items():
            if entry.state != DONE or not (self.root / stage / METRICS).is_file():
                continue  # not a stage with outputs (the attack, the search as a whole)
            self.samples(stage)
            self.metrics(stage)
            train = self.root / stage / "train.json"
            if train.is_file():
                try:
                    read_record(train, TrainState)
                except DamagedFile as error:
                    raise DamagedFile(f"{error}; {self._redo_hint(stage)}") from None

    def _redo_hint(self, stage: str) -> str:
        return f"delete {self.root / stage} and run `tamperaudit resume {self.root}` to measure that stage again"

    def samples(self, stage: str) -> list[Sample]:
        path = self.root / stage / SAMPLES
        entry = self.stage(stage)
        expected = entry.samples_sha256 if entry is not None else None
        try:
            text = read_text(path)  # read once: hashed, then parsed
            if expected is not None and sha256_text(text) != expected:
                raise DamagedFile(f"{path} is not the file its stage wrote (its SHA-256 differs): it was cut or changed")
            return parse_records(text, path, Sample)
        except DamagedFile as error:
            raise DamagedFile(f"{error}; {self._redo_hint(stage)}") from None
        except FileNotFoundError:
            raise DamagedFile(f"{path} is missing although its stage is marked done; {self._redo_hint(stage)}") from None

    def metrics(self, stage: str) -> StageMetrics:
        try:
            return read_record(self.root / stage / METRICS, StageMetrics)
        except DamagedFile as error:
            raise DamagedFile(f"{error}; {self._redo_hint(stage)}") from None

    def remove(self, path: Path) -> None:
        if not self.writes:
            return
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
