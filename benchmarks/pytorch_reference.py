"""Plain PyTorch reference for genlab's GPT recipes, timed on the CPU or a CUDA GPU.

Trains the same GPT with the same recipe as a genlab config, written the way nanoGPT writes it,
and writes ms/iter, tokens/s, MFU, losses, peak memory and machine details to a JSON file, so
genlab's JAX numbers can be compared like with like. Presets:
  cpu   experiments/shakespeare_char.py:cpu (nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide,
        block 64, batch 12, 2000 iterations), eager by default
  gpu   experiments/shakespeare_char.py:gpu (nanoGPT's train_shakespeare_char: 6 layers, 6 heads,
        384 wide, block 256, batch 64, dropout 0.2, 5000 iterations, val every 250)
  gpt2  experiments/gpt2_synthetic.py:124m (GPT-2 small on random tokens of a 50,304 vocabulary,
        block 1024, batch 16): speed only
On CUDA it runs as nanoGPT does: bf16 autocast, TF32 matmuls, fused AdamW, flash attention through
scaled_dot_product_attention (with its dropout), and torch.compile with --compile. PyTorch is an
optional benchmark dependency and is imported only here.

    python benchmarks/pytorch_reference.py [--preset cpu|gpu|gpt2] [--device cpu|cuda]
        [--seed N] [--iters N] [--gelu exact|tanh] [--compile] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
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
from train.perf import PEAK_FLOPS_BY_KIND, transformer_flops_per_token  # noqa: E402

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
    dropout: float = 0.0  # embeddings, attention weights, attention and MLP outputs (nanoGPT's)
    synthetic_vocab: int = 0  # > 0: random tokens of this vocabulary instead of the text
    eval_every: int = 0  # > 0: val loss over eval_batches_during every this many iterations
    eval_batches_during: int = 200
    window: int = 50  # iterations per timing window (one device sync at each end)
    device: str = "cpu"
    config: str = "experiments/shakespeare_char.py:cpu"


PRESETS: dict[str, dict] = {
    "cpu": {},
    "gpu": dict(
        iters=5000,
        batch_size=64,
        block_size=256,
        num_layers=6,
        num_heads=6,
        emb_dim=384,
        mlp_dim=1536,
        dropout=0.2,
        decay_iters=5000,
        eval_every=250,
        eval_batches_short=0,  # the last in-training eval (step 5000) is the final val loss
        eval_batches_long=0,
        train_eval_batches=0,
        config="experiments/shakespeare_char.py:gpu",
    ),
    "gpt2": dict(
        iters=60,
        batch_size=16,
        block_size=1024,
        num_layers=12,
        num_heads=12,
        emb_dim=768,
        mlp_dim=3072,
        lr=6e-4,
        min_lr=6e-5,
        warmup_iters=10,
        decay_iters=1000,
        beta2=0.95,
        synthetic_vocab=50304,
        window=10,
        eval_batches_short=0,
        eval_batches_long=0,
        train_eval_batches=0,
        config="experiments/gpt2_synthetic.py:124m",
    ),
}


# ----------------------------------------------------------------------------------------------
# Data


def load_splits(path: Path, s: Settings) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Encode the text by sorted characters, or draw random tokens (s.synthetic_vocab); return
    (train ids, val ids, vocab size)."""
    val_fraction = s.val_fraction
    if s.synthetic_vocab:
        gen = torch.Generator().manual_seed(s.seed)
        ids = torch.randint(0, s.synthetic_vocab, (1 << 21,), generator=gen)
        n_train = int(len(ids) * (1 - val_fraction))
        return ids[:n_train], ids[n_train:], s.synthetic_vocab
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    n_train = int(len(ids) * (1 - val_fraction))
    return ids[:n_train], ids[n_train:], len(vocab)


def sample_batch(
    ids: torch.Tensor, batch: int, block: int, gen: torch.Generator, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block` characters and their next-character targets, on `device`
    (through pinned memory on CUDA, as nanoGPT moves them)."""
    starts = torch.randint(0, len(ids) - block, (batch,), generator=gen)
    offsets = torch.arange(block + 1)
    windows = ids[starts[:, None] + offsets[None, :]]
    if device == "cuda":
        windows = windows.pin_memory().to(device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


# ----------------------------------------------------------------------------------------------
# Model


class Attention(nn.Module):
    """Multi-head causal self-attention without biases."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.heads = s.num_heads
        self.dropout = s.dropout
        self.qkv = nn.Linear(s.emb_dim, 3 * s.emb_dim, bias=False)
        self.proj = nn.Linear(s.emb_dim, s.emb_dim, bias=False)
        self.out_dropout = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (b, heads, t, head_dim)
        rate = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=rate, is_causal=True)
        return self.out_dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: attention then GELU MLP, each with a residual."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(s.emb_dim, bias=False)
        self.attn = Attention(s)
        self.ln_mlp = nn.LayerNorm(s.emb_dim, bias=False)
        self.fc_in = nn.Linear(s.emb_dim, s.mlp_dim, bias=False)
        self.fc_out = nn.Linear(s.mlp_dim, s.emb_dim, bias=False)
        self.mlp_dropout = nn.Dropout(s.dropout)
        self.approximate = "tanh" if s.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        h = F.gelu(self.fc_in(self.ln_mlp(x)), approximate=self.approximate)
        return x + self.mlp_dropout(self.fc_out(h))


class GPT(nn.Module):
    """Decoder-only character model with learned positions and a tied output head."""

    def __init__(self, s: Settings, vocab_size: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, s.emb_dim)
        self.pos_emb = nn.Embedding(s.block_size, s.emb_dim)
        self.emb_dropout = nn.Dropout(s.dropout)
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
        x = self.emb_dropout(self.tok_emb(idx) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_final(x) @ self.tok_emb.weight.T  # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Recipe


def make_optimizer(model: nn.Module, s: Settings) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of two or more dimensions only; the fused CUDA
    kernel on a GPU, as nanoGPT uses."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = {"fused": True} if s.device == "cuda" else {}
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, **fused)


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
    total = torch.zeros((), device=s.device)
    for _ in range(batches):
        with autocast(s):
            total += loss_fn(*sample_batch(ids, s.batch_size, s.block_size, gen, s.device))
    return total.item() / max(batches, 1)


def autocast(s: Settings):
    """bf16 autocast on CUDA (nanoGPT's default), nothing on the CPU."""
    if s.device == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(s: Settings) -> None:
    if s.device == "cuda":
        torch.cuda.synchronize()


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
    """Train, evaluate and time one run; return the result record.

    Iterations are timed in windows of `s.window` with a device sync at each end (one sync per
    window, as genlab's logging windows do); ms/iter is the median window's mean, the first
    window (compilation, warm-up) left out. Evaluation time is outside every window.
    """
    torch.manual_seed(s.seed)
    if s.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train_ids, val_ids, vocab_size = load_splits(data, s)
    model = GPT(s, vocab_size).to(s.device)
    optimizer = make_optimizer(model, s)
    loss_fn: nn.Module = model
    compile_error = None
    if s.compile:
        try:
            loss_fn = torch.compile(model)
        except Exception as e:  # reported; eager is used instead
            compile_error = repr(e)
    gen = torch.Generator().manual_seed(s.seed)
    eval_gen = torch.Generator().manual_seed(s.seed + 1)

    model.train()
    windows: list[float] = []
    batch_losses: list[float] = []
    evals: list[dict] = []
    pending: list[torch.Tensor] = []
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    started = time.perf_counter()
    eval_s = 0.0
    window_start = time.perf_counter()
    for it in range(s.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, s)
        x, y = sample_batch(train_ids, s.batch_size, s.block_size, gen, s.device)
        with autocast(s):
            loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_norm)
        optimizer.step()
        pending.append(loss.detach())
        done = it + 1
        if done % s.window == 0 or done == s.iters:
            synchronize(s)
            now = time.perf_counter()
            windows.append((now - window_start) / len(pending))
            batch_losses.extend(t.item() for t in pending)
            pending.clear()
            if done % 250 == 0 or done == s.window:
                print(f"iter {done:5d}  loss {batch_losses[-1]:.4f}  {1000 * windows[-1]:.2f} ms")
            if s.eval_every and done % s.eval_every == 0:
                eval_started = time.perf_counter()
                model.eval()
                val = mean_loss(loss_fn, val_ids, s.eval_batches_during, s, eval_gen)
                model.train()
                eval_s += time.perf_counter() - eval_started
                evals.append(
                    {
                        "step": done,
                        "val_loss": round(val, 4),
                        "wall_s": round(time.perf_counter() - started, 2),
                        "unix_time": time.time(),
                    }
                )
                print(f"iter {done:5d}  val {val:.4f}")
            window_start = time.perf_counter()
    train_wall = time.perf_counter() - started
    busy1, own1 = cpu_busy_s(), own_cpu_s()

    model.eval()
    eval_started = time.perf_counter()
    val_short = mean_loss(loss_fn, val_ids, s.eval_batches_short, s, eval_gen)
    val_long = mean_loss(loss_fn, val_ids, s.eval_batches_long, s, eval_gen)
    train_loss = mean_loss(loss_fn, train_ids, s.train_eval_batches, s, eval_gen)
    eval_wall = time.perf_counter() - eval_started

    steady = windows[1:] or windows
    ms_median = 1000 * statistics.median(steady)
    tokens = s.batch_size * s.block_size
    params = sum(p.numel() for p in model.parameters())
    flops = tokens * transformer_flops_per_token(
        params - model.pos_emb.weight.numel(), s.num_layers, s.block_size, s.emb_dim
    )
    device_name = torch.cuda.get_device_name() if s.device == "cuda" else cpu_name()
    peak = next(
        (f for k, f in PEAK_FLOPS_BY_KIND.items() if k.lower() in device_name.lower()), None
    )
    other_cores = None
    if busy0 is not None and busy1 is not None:
        other_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / train_wall
    best = min(evals, key=lambda e: e["val_loss"]) if evals else None
    return {
        "benchmark": f"PyTorch reference of {s.config}",
        "config": s.config,
        "device": device_name,
        "mode": "torch.compile" if s.compile and compile_error is None else "eager",
        "precision": "bf16 autocast, TF32 matmuls" if s.device == "cuda" else "float32",
        "compile_error": compile_error,
        "ms_per_iter_median": round(ms_median, 2),
        "ms_per_iter_mean": round(1000 * statistics.fmean(steady), 2),
        "ms_per_iter_min_max": [round(1000 * min(steady), 2), round(1000 * max(steady), 2)],
        "ms_per_iter_note": f"median over windows of {s.window} iterations (data sampling, "
        "forward, backward, clip, optimizer step; one device sync per window), the first window "
        "left out; evaluation excluded",
        "first_window_ms_per_iter": round(1000 * windows[0], 1),
        "tokens_per_s": round(tokens / (ms_median / 1000), 1),
        "model_flops_per_iter": flops,
        "mfu": round(flops / (ms_median / 1000) / peak, 4) if peak else None,
        "mfu_note": "6N + 12LTd FLOPs per token (N without the position table), over the "
        "device's dense bf16 peak from train/perf.py"
        if peak
        else "no peak known for device",
        "train_wall_s": round(train_wall, 2),
        "eval_during_training_s": round(eval_s, 2),
        "eval_wall_s": round(eval_wall, 2),
        "total_wall_s": round(train_wall + eval_wall, 2),
        "evals": evals,
        "best_val_loss": best and best["val_loss"],
        "best_val_step": best and best["step"],
        "wall_s_to_best_val": best and best["wall_s"],
        "final_val_loss_during": evals[-1]["val_loss"] if evals else None,
        "val_loss_20": round(val_short, 4) if s.eval_batches_short else None,
        "val_loss_400": round(val_long, 4) if s.eval_batches_long else None,
        "train_loss_20": round(train_loss, 4) if s.train_eval_batches else None,
        "last_batch_loss": round(batch_losses[-1], 4),
        "mean_batch_loss_last_50": round(statistics.fmean(batch_losses[-50:]), 4),
        "eval_note": f"after the last iteration: mean cross-entropy over random batches of "
        f"{s.batch_size}x{s.block_size} (val {s.eval_batches_short} and {s.eval_batches_long} "
        f"batches, then train {s.train_eval_batches}), drawn with a generator seeded "
        f"{s.seed + 1}; `evals`: val loss over {s.eval_batches_during} random batches every "
        f"{s.eval_every} iterations, with the wall time since the start (compilation included)",
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if s.device == "cuda"
        else None,
        "parameters": params,
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
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": "synthetic" if s.synthetic_vocab else str(data),
        "command": " ".join(sys.argv),
    }


def main() -> None:
    """Parse the command line, run, and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--iters", type=int, help="default: the preset's")
    parser.add_argument("--gelu", choices=("exact", "tanh"), default="exact")
    parser.add_argument("--compile", action="store_true", help="use torch.compile")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()

    preset = dict(PRESETS[args.preset])
    if args.iters is not None:
        preset["iters"] = args.iters
    s = Settings(seed=args.seed, gelu=args.gelu, compile=args.compile, device=args.device, **preset)
    result = run(s, Path(args.data))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "evals")}, indent=2))


if __name__ == "__main__":
    main()
