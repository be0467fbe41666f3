"""Plain PyTorch reference for `experiments/shakespeare_char.py:cpu`, timed on the CPU.

Trains the same character-level GPT with the same recipe as genlab's `cpu` variant (nanoGPT's
CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations, AdamW with
warm-up and cosine decay) in eager PyTorch, and writes ms/iter, tokens/s, final losses, peak
memory and machine details to a JSON file, so genlab's JAX numbers can be compared like with
like. PyTorch is an optional benchmark dependency and is imported only here.

    python benchmarks/pytorch_reference.py [--seed N] [--iters 2000] [--gelu exact|tanh]
        [--compile] [--out benchmarks/results/pytorch_reference.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.metadata import cpu_name  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared/data/tinyshakespeare/input.txt"
DEFAULT_OUT = REPO / "benchmarks/results/pytorch_reference.json"
SKIP_ITERS = 20  # per-iteration times left out of the median (warm-up)


@dataclass
class Settings:
    """Model and recipe; the defaults are `experiments/shakespeare_char.py:cpu`."""

    seed: int = 1337
    iters: int = 2000
    batch_size: int = 12
    block_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    emb_dim: int = 128
    mlp_dim: int = 512
    gelu: str = "exact"  # exact | tanh
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    decay_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    val_fraction: float = 0.1
    eval_batches_short: int = 20
    eval_batches_long: int = 400
    train_eval_batches: int = 20
    compile: bool = False


# ----------------------------------------------------------------------------------------------
# Data


def load_splits(path: Path, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Encode the text by sorted characters; return (train ids, val ids, vocab size)."""
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:], len(vocab)


def sample_batch(
    ids: torch.Tensor, batch: int, block: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block` characters and their next-character targets."""
    starts = torch.randint(0, len(ids) - block, (batch,), generator=gen)
    offsets = torch.arange(block + 1)
    windows = ids[starts[:, None] + offsets[None, :]]
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------------------------
# Model


class Attention(nn.Module):
    """Multi-head causal self-attention without biases."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.heads = s.num_heads
        self.qkv = nn.Linear(s.emb_dim, 3 * s.emb_dim, bias=False)
        self.proj = nn.Linear(s.emb_dim, s.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (b, heads, t, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: attention then GELU MLP, each with a residual."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(s.emb_dim, bias=False)
        self.attn = Attention(s)
        self.ln_mlp = nn.LayerNorm(s.emb_dim, bias=False)
        self.fc_in = nn.Linear(s.emb_dim, s.mlp_dim, bias=False)
        self.fc_out = nn.Linear(s.mlp_dim, s.emb_dim, bias=False)
        self.approximate = "tanh" if s.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        h = F.gelu(self.fc_in(self.ln_mlp(x)), approximate=self.approximate)
        return x + self.fc_out(h)


class GPT(nn.Module):
    """Decoder-only character model with learned positions and a tied output head."""

    def __init__(self, s: Settings, vocab_size: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, s.emb_dim)
        self.pos_emb = nn.Embedding(s.block_size, s.emb_dim)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.num_layers))
        self.ln_final = nn.LayerNorm(s.emb_dim, bias=False)
        self._init_weights(s)

    def _init_weights(self, s: Settings) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
        residual_std = 0.02 / math.sqrt(2 * s.num_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.fc_out.weight, mean=0.0, std=residual_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-character cross-entropy."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.ln_final(x) @ self.tok_emb.weight.T  # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Recipe


def make_optimizer(model: nn.Module, s: Settings) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of two or more dimensions only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps)


def learning_rate(it: int, s: Settings) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `decay_iters`."""
    if it < s.warmup_iters:
        return s.lr * (it + 1) / (s.warmup_iters + 1)
    if it > s.decay_iters:
        return s.min_lr
    progress = (it - s.warmup_iters) / (s.decay_iters - s.warmup_iters)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - s.min_lr)


@torch.no_grad()
def mean_loss(
    loss_fn: nn.Module, ids: torch.Tensor, batches: int, s: Settings, gen: torch.Generator
) -> float:
    """Mean loss over `batches` random batches of `ids`."""
    total = 0.0
    for _ in range(batches):
        total += loss_fn(*sample_batch(ids, s.batch_size, s.block_size, gen)).item()
    return total / batches


# ----------------------------------------------------------------------------------------------
# Machine


def cpu_busy_s() -> float | None:
    """Seconds of CPU time all cores have spent busy since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # guest time is already counted in user
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process (all threads) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scheduling() -> str:
    """This process's scheduling policy and priority, e.g. `SCHED_RR/5`."""
    try:
        policy = os.sched_getscheduler(0)
        names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO"}
        names[os.SCHED_RR] = "SCHED_RR"
        return f"{names.get(policy, str(policy))}/{os.sched_getparam(0).sched_priority}"
    except (AttributeError, OSError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Run


def run(s: Settings, data: Path) -> dict:
    """Train, evaluate and time one run; return the result record."""
    torch.manual_seed(s.seed)
    train_ids, val_ids, vocab_size = load_splits(data, s.val_fraction)
    model = GPT(s, vocab_size)
    optimizer = make_optimizer(model, s)
    loss_fn: nn.Module = model
    compile_error = None
    if s.compile:
        try:
            loss_fn = torch.compile(model)
        except Exception as e:  # reported; eager is used instead
            compile_error = repr(e)
    gen = torch.Generator().manual_seed(s.seed)

    model.train()
    times: list[float] = []
    batch_losses: list[float] = []
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    started = time.perf_counter()
    for it in range(s.iters):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, s)
        x, y = sample_batch(train_ids, s.batch_size, s.block_size, gen)
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_norm)
        optimizer.step()
        times.append(time.perf_counter() - t0)
        batch_losses.append(loss.item())  # after the timer: a sync that eager mode never needs
        if (it + 1) % 250 == 0 or it == 0:
            print(f"iter {it + 1:5d}  loss {batch_losses[-1]:.4f}  {1000 * times[-1]:.1f} ms")
    train_wall = time.perf_counter() - started
    busy1, own1 = cpu_busy_s(), own_cpu_s()

    model.eval()
    eval_gen = torch.Generator().manual_seed(s.seed + 1)
    eval_started = time.perf_counter()
    val_short = mean_loss(loss_fn, val_ids, s.eval_batches_short, s, eval_gen)
    val_long = mean_loss(loss_fn, val_ids, s.eval_batches_long, s, eval_gen)
    train_loss = mean_loss(loss_fn, train_ids, s.train_eval_batches, s, eval_gen)
    eval_wall = time.perf_counter() - eval_started

    steady = times[SKIP_ITERS:] or times
    ms_median = 1000 * statistics.median(steady)
    tokens = s.batch_size * s.block_size
    other_cores = None
    if busy0 is not None and busy1 is not None:
        other_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / train_wall
    return {
        "benchmark": "PyTorch reference, nanoGPT CPU recipe, Tiny Shakespeare char-level",
        "config": "experiments/shakespeare_char.py:cpu",
        "mode": "torch.compile" if s.compile and compile_error is None else "eager",
        "compile_error": compile_error,
        "ms_per_iter_median": round(ms_median, 2),
        "ms_per_iter_mean": round(1000 * statistics.fmean(steady), 2),
        "ms_per_iter_p10_p90": [
            round(1000 * q, 2) for q in statistics.quantiles(steady, n=10)[::8]
        ],
        "ms_per_iter_note": f"per-iteration wall time (data sampling, forward, backward, clip, "
        f"optimizer step), median over iterations {SKIP_ITERS + 1}..{s.iters}",
        "first_iter_ms": round(1000 * times[0], 1),
        "tokens_per_s": round(tokens / (ms_median / 1000), 1),
        "train_wall_s": round(train_wall, 2),
        "eval_wall_s": round(eval_wall, 2),
        "total_wall_s": round(train_wall + eval_wall, 2),
        "val_loss_20": round(val_short, 4),
        "val_loss_400": round(val_long, 4),
        "train_loss_20": round(train_loss, 4),
        "last_batch_loss": round(batch_losses[-1], 4),
        "mean_batch_loss_last_50": round(statistics.fmean(batch_losses[-50:]), 4),
        "eval_note": "after the last iteration: mean cross-entropy over random batches of "
        f"{s.batch_size}x{s.block_size} (val 20 and 400 batches, then train 20 batches), "
        f"drawn with a generator seeded {s.seed + 1}",
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab_size,
        "other_processes_cpu_cores": None if other_cores is None else round(other_cores, 3),
        "other_processes_note": "mean CPU cores used by other processes during training: busy "
        "time in /proc/stat minus this process's own CPU time, over the training wall time",
        "settings": asdict(s),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "scheduling": scheduling(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": str(data),
        "command": " ".join(sys.argv),
    }


def main() -> None:
    """Parse the command line, run, and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--gelu", choices=("exact", "tanh"), default="exact")
    parser.add_argument("--compile", action="store_true", help="use torch.compile")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()

    s = Settings(seed=args.seed, iters=args.iters, gelu=args.gelu, compile=args.compile)
    result = run(s, Path(args.data))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
