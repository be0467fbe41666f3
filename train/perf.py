"""Throughput and model FLOPs utilisation (MFU).

MFU = model FLOPs per step / step time / (peak FLOP/s per device x devices). Model FLOPs count the
forward and backward pass (3x the forward's 2 FLOPs per multiply-add) and are supplied by the task;
for a Transformer LM they are 6 N + 12 L T d per token (PaLM, Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets (sparse figures excluded).
PEAK_FLOPS_BY_KIND: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 70e12,
    "V100": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


@functools.cache
def measured_cpu_peak_flops(size: int = 1024, repeats: int = 10) -> float:
    """The float32 matmul FLOP/s this CPU reaches in XLA: the 'peak' MFU is measured against."""
    x = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Peak FLOP/s of one device, from the table above or measured for CPUs; None if unknown."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        # The measured rate is the whole CPU's (every XLA CPU device shares its cores).
        return measured_cpu_peak_flops() / jax.local_device_count("cpu")
    kind = device.device_kind
    for name, flops in PEAK_FLOPS_BY_KIND.items():
        if name.lower() in kind.lower():
            return flops
    return None


def transformer_flops_per_token(
    num_params: int, num_layers: int, context: int, width: int
) -> float:
    """Training FLOPs per token of a decoder Transformer: 6N for weights + 12 L T d attention.

    N counts every weight as it is (SwiGLU's three MLP matrices, grouped-query attention's
    narrower key/value projection). `width` d is that of the queries, num_heads x head_dim: the
    scores and the weighted sum run over every query head, however few key/value heads they
    share."""
    return 6.0 * num_params + 12.0 * num_layers * context * width
