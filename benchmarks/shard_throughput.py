"""How fast one host reads training windows from token shards:
`python benchmarks/shard_throughput.py`.

Writes a synthetic corpus of at least 200M uint16 tokens (random ids below 50,257, straight from
numpy) with a manifest and a stand-in tokenizer into a temporary folder, builds GPT-2 small's task
on it (`experiments/openwebtext_gpt2.py:124m`: block 1024, batch 480) and times
`task.train_batch(step)`, the call the trainer makes for every step, for
  - one process reading all 480 rows of each batch, and
  - process 0 of 8 (60 rows each), what each host of an 8-host run reads,
first with the shards evicted from the page cache (`posix_fadvise(DONTNEED)`: a first epoch on a
cold disk), then with them cached (every later step of a corpus that fits the host's RAM). It does
so for shards of 100M tokens (the 124m config's: 2 shards) and of 2.5M (80 shards, as many as
OpenWebText makes at 100M, since each batch maps every shard it reads).
Then it trains the small `test` model (block 256, 20 steps) once on a 2M-token corpus and once
on the full one and compares the two runs' peak resident memory: the corpus must not add to it
(the issue's bound: under 1 GiB beyond the model's). `--training_only` adds just that check to
an existing result.
Memory comes from /proc/self/status before and after: `RssAnon` (what the process itself holds)
and `RssFile` (pages of files it maps at that moment), plus the peak (ru_maxrss).
The target: 20x the ~500k tokens/s that one H100 trains GPT-2 small on (the README's H200 figure
at batch 16 is 502,799 tokens/s). Results: `benchmarks/results/shard_throughput.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPT2_IDS = 50257
H100_GPT2_TOKENS_PER_S = 500_000  # one GPU's appetite at GPT-2 small shape
TARGET_FACTOR = 20


def memory() -> dict[str, float]:
    """This process's resident memory in MiB: total, anonymous, file-backed; and the peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    fields["peak_rss"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return fields


def write_corpus(folder: Path, tokens: int, shard_tokens: int, seed: int) -> None:
    """Shards of random GPT-2 ids, their manifest and a (small, stand-in) tokenizer."""
    from train.data.shard_writer import write_atomically, write_manifest
    from train.data.shards import FORMAT, VERSION, canonical_json, fingerprint, shard_name
    from train.data.tokenizers import TOKENIZER_FILE, fit_tokenizer, read_tokenizer_file

    rng = np.random.default_rng(seed)
    splits: dict[str, dict] = {}
    for split, count in (("train", tokens), ("val", shard_tokens // 100)):
        shards = []
        for index, start in enumerate(range(0, count, shard_tokens)):
            size = min(shard_tokens, count - start)
            with open(folder / shard_name(split, index), "wb") as f:
                for piece in range(0, size, 1 << 24):
                    n = min(1 << 24, size - piece)
                    rng.integers(0, GPT2_IDS, n, dtype=np.uint16).tofile(f)
            shards.append({"file": shard_name(split, index), "tokens": size})
        splits[split] = {"documents": 0, "chars": count, "tokens": count, "shards": shards}
    # The read path never decodes; any tokenizer will do, and a small one is quick to fit.
    tokenizer = fit_tokenizer("bpe", ["stand-in tokenizer for a throughput run"] * 4, 300)
    write_atomically(folder / TOKENIZER_FILE, canonical_json(tokenizer))
    saved = read_tokenizer_file(folder / TOKENIZER_FILE)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": "uint16",
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": fingerprint(saved)},
        "splits": splits,
    }
    write_manifest(folder, manifest)


def evict(folder: Path) -> None:
    """Drop the shards from the page cache, as if first read from disk."""
    for path in folder.glob("*.bin"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(folder: Path) -> None:
    """Read every shard once, so that the page cache holds them."""
    for path in sorted(folder.glob("*.bin")):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def batch_function(task, hosts: int) -> Callable[[int], dict[str, np.ndarray]]:
    """The trainer's call for step s's batch (`task.train_batch`, this being process 0 of 1), or
    what it does on process 0 of `hosts` (the task asks JAX for the process index and count)."""
    if hosts == 1:
        return task.train_batch
    windows, c = task.data.train_windows(), task.config
    return lambda step: windows.batch(c.seed, step, c.train.batch_size, 0, hosts)


def time_batches(
    read: Callable[[int], dict[str, np.ndarray]], first_step: int, steps: int
) -> dict[str, float]:
    """Windows/s and tokens/s of `steps` batches."""
    rows = 0
    started = time.perf_counter()
    for step in range(first_step, first_step + steps):
        batch = read(step)
        rows += batch["inputs"].shape[0]
    seconds = time.perf_counter() - started
    block = batch["inputs"].shape[1]
    return {
        "batches": steps,
        "rows_per_batch": rows // steps,
        "seconds": round(seconds, 3),
        "ms_per_batch": round(1000 * seconds / steps, 3),
        "windows_per_s": round(rows / seconds),
        "tokens_per_s": round(rows * block / seconds),
    }


def measure_layout(args: argparse.Namespace, shard_tokens: int) -> dict:
    """One corpus of `args.tokens` in shards of `shard_tokens`: each reader, cold then warm."""
    from launch.config import apply_overrides, load_config
    from train.data.splits import TRAINING
    from train.tasks import build_task

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="genlab-shards-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        write_corpus(folder, args.tokens, shard_tokens, seed=0)
        layout: dict = {
            "corpus": {
                "train_tokens": args.tokens,
                "shard_tokens": shard_tokens,
                "train_shards": len(list(folder.glob("train_*.bin"))),
                "bytes": sum(p.stat().st_size for p in folder.glob("*.bin")),
                "dtype": "uint16",
                "write_s": round(time.perf_counter() - started, 1),
            }
        }
        config = load_config(str(REPO / "experiments/openwebtext_gpt2.py:124m"))
        apply_overrides(config, {"data.path": str(folder)})
        for hosts in (1, 8):
            task = build_task(config, workdir=None, splits=TRAINING)
            read = batch_function(task, hosts)
            entry = {"memory_before_mib": memory()}
            evict(folder)
            entry["cold"] = time_batches(read, 0, args.steps)
            entry["memory_after_cold_mib"] = memory()
            warm(folder)
            entry["warm"] = time_batches(read, args.steps, args.steps)
            entry["memory_after_mib"] = memory()
            layout["1_host" if hosts == 1 else f"1_of_{hosts}_hosts"] = entry
            del task, read
    return layout


def train_peak_rss(corpus: Path, workdir: Path) -> dict:
    """Peak resident memory (MiB) of a short `genlab train` of the small `test` model on
    `corpus`, read from the child's own rusage: what the data path adds to the model's."""
    import subprocess

    command = [
        sys.executable, "-m", "launch.cli", "train",
        "--config", "experiments/openwebtext_gpt2.py:test", "--workdir", str(workdir),
        f"--config.data.path={corpus}", "--config.data.vocab_size=50304",
        "--config.data.block_size=256", "--config.train.steps=20",
        "--config.train.eval_every=20", "--config.train.checkpoint_every=20",
        "--config.evals.samples.every=-1",
    ]  # fmt: skip
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read().decode()[-2000:]}")
    return {
        "corpus_train_tokens": sum(
            s["tokens"]
            for s in json.loads((corpus / "manifest.json").read_text())["splits"]["train"]["shards"]
        ),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure_training(args: argparse.Namespace) -> dict:
    """The same short run on a 2M-token corpus and on the full one: host memory must not grow
    with the corpus (the issue: under 1 GiB beyond the model's)."""
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="genlab-train-") as tmp:
        runs = {}
        for name, tokens in (("small_corpus", 2_000_000), ("full_corpus", args.tokens)):
            corpus = Path(tmp) / name
            corpus.mkdir()
            write_corpus(corpus, tokens, 100_000_000, seed=1)
            runs[name] = train_peak_rss(corpus, Path(tmp) / f"run_{name}")
        growth = runs["full_corpus"]["peak_rss_mib"] - runs["small_corpus"]["peak_rss_mib"]
        return {**runs, "growth_mib": round(growth, 1), "under_1_gib": growth < 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000_000, help="training tokens")
    parser.add_argument(
        "--shard_tokens",
        default="100000000,2500000",
        help="shard sizes to measure, comma-separated (default: the 124m config's 100M, and "
        "2.5M, which gives as many shards (80) as OpenWebText has at 100M)",
    )
    parser.add_argument("--steps", type=int, default=200, help="batches per measurement")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/shard_throughput.json"))
    parser.add_argument("--tmp", default=None, help="where the corpus goes (default: $TMPDIR)")
    parser.add_argument(
        "--training_only",
        action="store_true",
        help="only the training memory check; merged into an existing --out",
    )
    args = parser.parse_args()
    if args.tokens < 200_000_000:
        raise SystemExit(f"--tokens={args.tokens}: at least 200,000,000 (the issue's size)")

    from experiments.openwebtext_gpt2 import get_config
    from train.metadata import collect, cpu_name

    if args.training_only:  # add the training memory check to a finished result
        out = Path(args.out)
        result = json.loads(out.read_text())
        result["training"] = measure_training(args)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["training"], indent=2))
        return
    config = get_config("124m")
    load_before = os.getloadavg()
    layouts = [measure_layout(args, int(n)) for n in args.shard_tokens.split(",")]
    training = measure_training(args)
    need = H100_GPT2_TOKENS_PER_S * TARGET_FACTOR
    slowest = {
        kind: min(layout["1_host"][kind]["tokens_per_s"] for layout in layouts)
        for kind in ("cold", "warm")
    }
    result = {
        "benchmark": "token shard windows read per host at GPT-2 small shape",
        "call_timed": "Task.train_batch(step) of experiments/openwebtext_gpt2.py:124m "
        "(1_of_8_hosts: the same windows' batch() for process 0 of 8)",
        "shape": {"block_size": config.data.block_size, "batch_size": config.train.batch_size},
        "cold_means": "the shards dropped from this VM's page cache (posix_fadvise DONTNEED) "
        "before the first batch; the VM's virtual disk may still be cached by its host",
        "warm_means": "every shard read once before timing: all of it in the page cache",
        "memory_means": "MiB from /proc/self/status: RssAnon is the process's own memory, "
        "RssFile the file pages it maps right now; peak_rss is ru_maxrss",
        "layouts": layouts,
        "training": training,
        "target": {
            "h100_gpt2_small_tokens_per_s": H100_GPT2_TOKENS_PER_S,
            "factor": TARGET_FACTOR,
            "needed_tokens_per_s": need,
            "slowest_one_host_cold_over_h100": round(slowest["cold"] / H100_GPT2_TOKENS_PER_S, 1),
            "slowest_one_host_warm_over_h100": round(slowest["warm"] / H100_GPT2_TOKENS_PER_S, 1),
            "met": min(slowest.values()) >= need,
        },
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "environment": collect(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
