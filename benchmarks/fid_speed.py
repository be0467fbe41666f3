"""FID feature throughput, genlab against pytorch-fid, in one run: `python benchmarks/fid_speed.py`.

Both sides get the same 28x28 grey MNIST test images as [0, 1] floats and return pool3
features, the bilinear resize to 299x299 included, in batches of 50 on this machine's cores
(JAX: one XLA device per core, as `genlab eval --metric fid` runs; torch: one intra-op thread per
core). Both networks carry the same weights: pytorch-fid's `InceptionV3([3])` is built without
its download and given the shared .npz through `layers.json`'s `pytorch_fid_name`, and the
features are compared before timing. Batches alternate between the sides (in ABBA order), so
other load on the machine falls on both alike. `--profile` adds the per-layer conv timing behind
`models.inception.conv2d`. Writes `benchmarks/results/fid_speed.json`; `--smoke` is a quick dry
run on a few images that writes nothing unless `--out` is given.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared/data"
WEIGHTS = DATA / "fid_inception_v3"

FINDINGS = [
    "Profile on this machine (2 cores, batch 50, ms per batch; other processes loaded the "
    "CPU at times, so single numbers carry ~10% noise).",
    "Before: 3.6-4.2 s per batch with one XLA device per core (12-14 images/s), 6.0 s with one "
    "device using both cores as intra-op threads. By part (split CPU): resize 22, stem 1471, "
    "mixed..mixed_2 586, mixed_3 421, mixed_4..7 856, mixed_8 124, mixed_9..10 309.",
    "The convolutions were 97% of the time, and XLA's CPU convolution is fast (200-350 "
    "GFLOP/s) only for stride 1 with 'same' padding. The graph's unpadded and strided 3x3 "
    "layers ran at 20-90 GFLOP/s: conv_1 416 ms, conv_4 738-790 ms, mixed_3/conv 344-352 ms.",
    "Fix (models.inception.conv2d): unpadded stride-1 layers run as 'same' and are cropped "
    "(bit-identical; conv_1 416 -> 166 ms, conv_4 782 -> 394 ms), 1x1 layers as a matmul "
    "(mixed_2/conv 29 -> 11 ms), strided layers with >= 192 input channels as one matmul over "
    "gathered 3x3 patches (mixed_3/conv 332 -> 164 ms; sums reordered, ~1e-6 relative). Thinner "
    "strided layers stay plain, where patches lose (stem conv 98 -> 107 ms, mixed_3/tower/conv_2 "
    "15 -> 29 ms). Convs 3.5-3.7 -> 2.4 s per batch.",
    "After, by part (split CPU): resize 11-23, stem 786-811, mixed..mixed_2 432-473, mixed_3 "
    "217-233, mixed_4..7 738-763, mixed_8 108-119, mixed_9..10 258-280: 2.6 s per batch.",
    "One XLA device per core stays faster than one device with 2 intra-op threads (2.63 vs "
    "3.39 s per batch after the fix, 3.6 vs 6.0 before; the stem gains most: 0.81 vs 1.24 s): "
    "XLA's CPU runtime leaves a core idle in many operations, and two devices each keep one busy.",
    "No gain, not used: NCHW layout (slower for every layer measured, e.g. 25 -> 64 ms for a "
    "1x1 conv); HIGHEST vs default precision (5.93 vs 6.09 s, bit-identical features: CPU has no "
    "reduced-precision path, the setting matters on accelerators); folding the frozen batch "
    "norm into the kernels (XLA already fuses it into the conv's output: within noise); "
    "padding channels to multiples of 32/64 (slower); gathered patches for the stride-1 layers "
    "(1.6-4.6x slower than 'same' + crop); XLA flags xla_cpu_use_xnnpack, xla_cpu_use_onednn and "
    "the experimental XNN/oneDNN fusion types (no change or slower).",
    "The resize is jitted together with the network (11-32 ms of a batch). Donation is not "
    "used: the weights are reused every call, and the only per-call buffer, the 157 KB input, "
    "cannot hold the (50, 2048) output, so there is nothing for XLA to reuse.",
]


def cpu_model() -> str:
    """`Model name` from lscpu (the metadata record's cpu name may be shortened)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def wait_for_quiet(limit: float, max_wait_s: float) -> list[float]:
    """Sleep (a minute at a time, up to `max_wait_s`) while the 1-minute load is above `limit`;
    the load averages when measuring starts."""
    waited = 0.0
    while os.getloadavg()[0] > limit and waited < max_wait_s:
        print(f"load {os.getloadavg()[0]:.2f} > {limit}: waiting", flush=True)
        time.sleep(60)
        waited += 60
    return [round(value, 2) for value in os.getloadavg()]


def import_pytorch_fid() -> Any:
    """pytorch_fid.inception. PyPI's torchvision wheels are linked against CUDA torch; with a
    CPU-only torch their C++ ops cannot load and `import torchvision` stops at the two op
    schemas it registers fake kernels for. pytorch-fid uses no torchvision op (only its Python
    Inception blocks), so the schemas are declared, unimplemented, and the import retried."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [name for name in sys.modules if name.startswith("torchvision")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            torch.library.define(f"torchvision::{op}", schema)
    import pytorch_fid.inception

    return pytorch_fid.inception


def pytorch_fid_model(weights: Path) -> Any:
    """pytorch-fid's InceptionV3([3], resize_input, normalize_input, use_fid_inception) with the
    shared .npz weights; its download is replaced by the state dict built here."""
    import torch

    module = import_pytorch_fid()
    layers = json.loads((weights / "layers.json").read_text())["layers"]
    state: dict[str, torch.Tensor] = {}
    with np.load(weights / "inception-2015-12-05-fid-pool3.npz") as npz:
        for name, spec in layers.items():
            prefix = spec["pytorch_fid_name"]
            beta = torch.from_numpy(npz[f"{name}/beta"])
            state[f"{prefix}.conv.weight"] = torch.from_numpy(npz[f"{name}/weight"])
            state[f"{prefix}.bn.weight"] = torch.ones_like(beta)  # the graph has no BN scale
            state[f"{prefix}.bn.bias"] = beta
            state[f"{prefix}.bn.running_mean"] = torch.from_numpy(npz[f"{name}/mean"])
            state[f"{prefix}.bn.running_var"] = torch.from_numpy(npz[f"{name}/var"])
            state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    # The 1008-way classifier is not in the file and not on the way to pool3.
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    module.load_state_dict_from_url = lambda *args, **kwargs: state
    model = module.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    return model.eval()


def torch_features(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """[0, 1] images (N, H, W, 1) -> (N, 2048) features, as pytorch-fid's own loop feeds them
    (NCHW RGB; the model resizes and scales to [-1, 1] itself)."""
    import torch

    def features(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
            return model(x)[0].flatten(1).numpy().astype(np.float64)

    return features


def timed_rounds(
    sides: dict[str, Callable[[np.ndarray], np.ndarray]], batches: list[np.ndarray]
) -> dict[str, list[float]]:
    """Seconds per batch for each side, alternating sides in ABBA order."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for index, batch in enumerate(batches):
        for name in names if index % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            sides[name](batch)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def conv_profile(repeats: int = 3) -> list[dict[str, Any]]:
    """Each distinct conv layer of the network at batch 50 on the split CPU: the plain XLA
    convolution against `conv2d`, ms for all layers of that shape, best of `repeats`."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from models import inception

    shapes: dict[tuple, list[str]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, inception.ConvBN) and context.method_name == "__call__":
            key = (args[0].shape[1:], module.features, module.kernel, module.stride)
            shapes.setdefault((*key, module.padding), []).append("/".join(module.scope.path))
        return next_fun(*args, **kwargs)

    image = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0), image)
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    whole = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(0)
    highest = jax.lax.Precision.HIGHEST
    forms = {"plain": inception.plain_conv, "conv2d": inception.conv2d}
    table = []
    for (shape, features, kernel, stride, padding), names in shapes.items():
        x = jax.device_put(rng.uniform(0, 1, (50, *shape)).astype(np.float32), rows)
        w = rng.normal(0, 0.1, (*kernel, shape[-1], features)).astype(np.float32)
        w = jax.device_put(w, whole)
        row: dict[str, Any] = {"layers": names, "input": list(shape), "out": features}
        row |= {"kernel": list(kernel), "stride": stride, "padding": list(padding)}
        for form, conv in forms.items():
            run = functools.partial(conv, stride=stride, padding=padding, precision=highest)
            compiled = jax.jit(run, in_shardings=(rows, whole))
            compiled(x, w).block_until_ready()
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                compiled(x, w).block_until_ready()
                best = min(best, time.perf_counter() - started)
            row[f"{form}_ms"] = round(1000 * best * len(names), 1)
        print(row, flush=True)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="timed batches per side")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="4 images, 1 timed batch, no wait")
    parser.add_argument("--profile", action="store_true", help="add the per-layer conv timing")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait while load is above")
    parser.add_argument("--max-wait-s", type=float, default=600.0)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/fid_speed.json")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.batch_size, args.max_wait_s = 1, 4, 0.0
    out = args.out or (None if args.smoke else REPO / "benchmarks/results/fid_speed.json")
    load_before = wait_for_quiet(args.max_load, args.max_wait_s)  # before this run adds its own
    cores = len(os.sched_getaffinity(0))
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cores}"

    import jax
    import torch

    from train.data import images as image_data
    from train.metadata import collect
    from train.metrics import fid

    torch.set_num_threads(cores)
    count = args.batch_size * (args.batches + 1)
    pixels, _ = image_data.load_split("mnist", str(DATA / "mnist"), "test")
    images = image_data.scale(pixels[:count], "unit").astype(np.float32)
    batches = np.split(images, args.batches + 1)
    extractor = fid.FeatureExtractor(WEIGHTS, batch_size=args.batch_size)
    sides = {"genlab": extractor, "pytorch_fid": torch_features(pytorch_fid_model(WEIGHTS))}
    warm = {name: side(batches[0]) for name, side in sides.items()}  # compiles, allocates
    difference = float(np.max(np.abs(warm["genlab"] - warm["pytorch_fid"])))
    print(f"features agree to {difference:.3g} (largest feature {warm['genlab'].max():.3g})")

    seconds = timed_rounds(sides, batches[1:])
    load_after = [round(value, 2) for value in os.getloadavg()]
    rates = {
        name: {
            "images_per_s": round(args.batch_size * len(times) / sum(times), 2),
            "median_s_per_batch": round(float(np.median(times)), 3),
            "s_per_batch": [round(t, 3) for t in times],
        }
        for name, times in seconds.items()
    }
    speedup = rates["genlab"]["images_per_s"] / rates["pytorch_fid"]["images_per_s"]
    result = {
        "benchmark": "FID pool3 feature throughput: genlab (JAX) vs pytorch-fid (torch), CPU",
        "images": "MNIST test, 28x28 grey in [0, 1], first "
        f"{count}; the first batch warms up both sides and is not timed",
        "includes": "28 -> 299 bilinear resize, grey -> RGB, [0, 1] -> [-1, 1], network, "
        "features back as NumPy",
        "batch_size": args.batch_size,
        "timed_batches_per_side": args.batches,
        "order": "alternating, ABBA",
        "results": rates,
        "genlab_over_pytorch_fid": round(speedup, 2),
        "feature_max_abs_diff": difference,
        "largest_feature": round(float(warm["genlab"].max()), 3),
        "cores": cores,
        "cpu_model": cpu_model(),
        "jax_cpu_devices": jax.local_device_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15_before": load_before,
        "load_avg_1_5_15_after_incl_this_run": load_after,
        "torch_side": {
            name: importlib.metadata.version(name)
            for name in ("torch", "torchvision", "pytorch-fid")
        },
        "findings": FINDINGS,
        "environment": collect(sys.argv),
    }
    if args.profile:
        result["conv_profile_ms_per_batch"] = conv_profile()
    print(json.dumps({k: result[k] for k in ("results", "genlab_over_pytorch_fid")}, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
