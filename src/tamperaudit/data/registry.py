"""Named public benchmarks, pinned by source URL (at a commit) and SHA-256.

Nothing is fetched silently: ``tamperaudit data fetch NAME`` downloads a benchmark
into the cache and checks its hash; afterwards ``--harmful NAME`` (or ``--benign``,
``--capability``) uses the cached file. A file whose hash differs is deleted and
reported, never used.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tamperaudit.errors import UserError
from tamperaudit.fileio import sha256_file

RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Benchmark:
    name: str
    role: str  # harmful, benign or capability: the flag it is meant for
    url: str
    sha256: str
    filename: str
    license: str
    note: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "advbench", "harmful",
            f"{RAW}/llm-attacks/llm-attacks/0f505d82e25c15a83b6954db28191b69927a255d/data/advbench/harmful_behaviors.csv",
            "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1", "harmful_behaviors.csv", "MIT",
        ),
        Benchmark(
            "harmbench", "harmful",
            f"{RAW}/centerforaisafety/HarmBench/8e1604d1171fe8a48d8febecd22f600e462bdcdd/data/behavior_datasets/harmbench_behaviors_text_all.csv",
            "8d81accedd38eaaf8b760618622bb888417d1fd0c86eba65c427a16f1cbb4afc", "harmbench_behaviors_text_all.csv", "MIT",
            "standard behaviours only unless eval.harmbench_functional says otherwise",
        ),
        Benchmark(
            "strongreject", "harmful",
            f"{RAW}/jiang-111/rebuttalAttackMem0/f472d0c55129a51ce27be3e0fbea973641bcfedf/data/strongreject_dataset.csv",
            "ab3a843b39033d7de4b41671f31cc84cea565be5b77efd71042fc6eba6abfc5f", "strongreject_dataset.csv",
            "MIT (authors' prompts); sourced prompts keep their licences",
            "a vendored copy whose prompt column is named meli_query; same 313 prompts as upstream",
        ),
        Benchmark(
            "xstest", "benign",
            f"{RAW}/paul-rottger/exaggerated-safety/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts.csv",
            "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a", "xstest_prompts.csv", "CC-BY-4.0",
        ),
        Benchmark(
            "arc-easy", "capability",
            f"{RAW}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/world_knowledge/arc_easy.jsonl",
            "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", "arc_easy.jsonl", "CC BY-SA 4.0",
        ),
        Benchmark(
            "arc-challenge", "capability",
            f"{RAW}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/world_knowledge/arc_challenge.jsonl",
            "1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636", "arc_challenge.jsonl", "CC BY-SA 4.0",
        ),
        Benchmark(
            "piqa", "capability",
            f"{RAW}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/commonsense_reasoning/piqa.jsonl",
            "d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", "piqa.jsonl", "unclear (see the PIQA authors)",
        ),
        Benchmark(
            "winogrande", "capability",
            f"{RAW}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/language_understanding/winogrande.jsonl",
            "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7", "winogrande.jsonl", "CC-BY",
        ),
        Benchmark(
            "boolq", "capability",
            f"{RAW}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/reading_comprehension/boolq.jsonl",
            "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8", "boolq.jsonl", "CC BY-SA 3.0",
        ),
        Benchmark(
            "hellaswag", "capability",
            f"{RAW}/klosax/hellaswag_text_data/1105d370f8340eac3c63a91fd1fa58e8999f9505/hellaswag_val_full.txt.bz2",
            "50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b", "hellaswag_val_full.txt.bz2", "MIT",
        ),
        Benchmark(
            "truthfulqa-mc", "capability",
            f"{RAW}/sylinrl/TruthfulQA/d71c110897f5d31c5d7f309e7bc316c152f6f031/data/v1/mc_task.json",
            "b3799639bc76c939836d587de7d30b48d91012cb34be04806d33106ce06c162a", "mc_task.json", "Apache-2.0",
            "the 817-question v1, scored as MC1",
        ),
    )
}


def _folder(name: str) -> Path:
    from tamperaudit.models import cache_root

    return cache_root() / "benchmarks" / name


class _TooLarge(Exception):
    pass


def cached_path(name: str) -> Path:
    """The verified cached file of a named benchmark; fetching is never implicit."""
    benchmark = BENCHMARKS[name]
    path = _folder(name) / benchmark.filename
    if not path.is_file():
        raise UserError(f"{name}: not downloaded yet; run `tamperaudit data fetch {name}` (it needs internet access)")
    return path


# No benchmark in the table is near this; a larger download is a wrong or hostile URL.
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024


def fetch(name: str, timeout: float = 60.0) -> Path:
    """Download a named benchmark into the cache and verify its SHA-256."""
    if name not in BENCHMARKS:
        raise UserError(f"{name}: not a known benchmark ({', '.join(BENCHMARKS)})")
    benchmark = BENCHMARKS[name]
    folder = _folder(name)
    target = folder / benchmark.filename
    if target.is_file() and sha256_file(target) == benchmark.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(benchmark.url, timeout=timeout) as response, open(partial, "wb") as out:
            received = 0
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise _TooLarge()
                out.write(chunk)
    except _TooLarge:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"{name}: the download from {benchmark.url} passed {MAX_DOWNLOAD_BYTES // 2**20} MiB, more than any "
            "benchmark here; nothing was kept"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise UserError(f"{name}: download from {benchmark.url} failed ({error})") from None
    got = sha256_file(partial)
    if got != benchmark.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"{name}: the download's SHA-256 is {got[:16]}..., not the pinned {benchmark.sha256[:16]}...; nothing was kept")
    os.replace(partial, target)
    return target
