"""One likelihood table across families: `python benchmarks/bpd_families.py`.

Bits per dimension of the 10,000 8-bit MNIST test images, one convention for every row: the
negative log-probability of the discrete grey levels (256 per pixel), in bits, over 784
dimensions. It trains and scores a VAE with a discretized logistic decoder
(`vae_mnist.py:grey_cpu`, NLL by the importance-weighted bound at k = 5000) and an
autoregressive Transformer over the pixels (`pixel_lm_mnist.py:cpu`, exact NLL), and takes the
DDPM bound from the committed `diffusion_cpu.json` (its discretized decoder is the same
convention). Stages already finished under `--root` are not rerun. Writes
`benchmarks/results/bpd_families.json` and the two new runs' sample grids.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import DATA, REPO, copy_newest, steps_per_second, timed, trained_run

RESULTS = REPO / "benchmarks" / "results"
PICTURES = RESULTS / "bpd_families"
TEST_IMAGES = 10_000
IWAE_K = 5000
# Published test bits/dim on 8-bit MNIST, for the size of the gap (models trained for days on
# GPUs). Read second-hand, not from the papers' tables: leaderboard pages (hyper.ai,
# paperswithcode, wizwand) and notes quoting the papers. Flows are dequantized densities, whose
# bits/dim bound the discrete NLL from above.
PUBLISHED = {
    "FFJORD (Grathwohl et al. 2019)": 0.99,
    "MAF (as listed by FFJORD)": 1.89,
    "i-ResNet (Behrmann et al. 2019)": 1.06,
    "softmax Transformer over pixels (Katharopoulos et al. 2020, Table 1)": 0.621,
}


def train_and_score(
    root: Path, name: str, config: str, data: Path, eval_overrides: list[str]
) -> tuple[dict, dict, Path]:
    trained, workdir = trained_run(root, name, config, data)
    scored, _ = timed(
        "eval", root / f"{name}.eval.json",
        "eval", "--workdir", str(workdir), "--metric", "heldout", *eval_overrides,
    )  # fmt: skip
    return trained, scored, workdir


def pixel_lm(root: Path, data: Path) -> dict:
    config = "experiments/pixel_lm_mnist.py:cpu"
    eval_batch = 100
    overrides = [
        f"--config.train.batch_size={eval_batch}",
        f"--config.train.eval_batches={TEST_IMAGES // eval_batch}",
    ]
    trained, scored, workdir = train_and_score(root, "pixel_lm", config, data, overrides)
    copy_newest(workdir / "samples", "samples", PICTURES / "pixel_lm_samples.png")
    steps = scored["step"]
    return {
        "config": config,
        "model": "decoder-only Transformer over the 784 pixels in raster order (256 grey-level "
        "tokens + a start token), exact NLL",
        "test_bpd": round(scored["eval/bpd"], 4),
        "test_nll_nats": round(scored["eval/loss"] * 784, 1),
        "steps": steps,
        "batch_size": 8,
        "training_images": steps * 8,
        "train_wall_s": trained["train_wall_s"],
        "steps_per_s": steps_per_second(workdir),
        "eval_wall_s": scored["eval_wall_s"],
        "command": f"genlab train --config {config} ...; genlab eval --metric heldout "
        + " ".join(overrides),
        "samples": "benchmarks/results/bpd_families/pixel_lm_samples.png",
    }


def grey_vae(root: Path, data: Path) -> dict:
    config = "experiments/vae_mnist.py:grey_cpu"
    overrides = [f"--config.eval.iwae_samples={IWAE_K}"]
    trained, scored, workdir = train_and_score(root, "vae_grey", config, data, overrides)
    copy_newest(workdir / "samples", "samples", PICTURES / "vae_grey_samples.png")
    steps = scored["step"]
    return {
        "config": config,
        "model": "VAE 784-200-200-50 (tanh), discretized logistic decoder; NLL by IWAE k=5000",
        "test_bpd": round(scored["eval/bpd"], 4),
        "test_nll_nats": round(scored["eval/nll"], 1),
        "test_elbo_nats": round(scored["eval/elbo"], 1),
        "steps": steps,
        "batch_size": 100,
        "training_images": steps * 100,
        "train_wall_s": trained["train_wall_s"],
        "steps_per_s": steps_per_second(workdir),
        "eval_wall_s": scored["eval_wall_s"],
        "command": f"genlab train --config {config} ...; genlab eval --metric heldout "
        + " ".join(overrides),
        "samples": "benchmarks/results/bpd_families/vae_grey_samples.png",
    }


def ddpm() -> dict:
    result = json.loads((RESULTS / "diffusion_cpu.json").read_text())
    return {
        "config": result["config"],
        "model": "DDPM U-Net, variational bound (50 strata of t), discretized decoder",
        "test_bpd": result["test_bpd"],
        "test_nll_nats": result["test_nll_nats"],
        "steps": result["steps"],
        "batch_size": result["batch_size"],
        "training_images": result["steps"] * result["batch_size"],
        "train_wall_s": result["train_wall_s"],
        "steps_per_s": result["steps_per_s"],
        "eval_wall_s": result["bound_eval_wall_s"],
        "from": "benchmarks/results/diffusion_cpu.json (python benchmarks/diffusion_cpu.py)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "mnist"))
    parser.add_argument("--root", default="", help="where the runs go; finished stages are kept")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bpd_families_"))
    data = Path(args.data).resolve()
    rows = {
        "VAE, discretized logistic decoder (grey_cpu)": grey_vae(root, data),
        "DDPM U-Net (cpu)": ddpm(),
        "pixel Transformer, ImageGPT-style (cpu)": pixel_lm(root, data),
    }
    record = {
        "data": "MNIST test, all 10,000 images, 8-bit grey levels",
        "convention": "-log2 P(x) / 784 of the discrete images (no dequantization noise; a "
        "dequantized density's bits/dim bounds this from above)",
        "models": rows,
        "published_bpd": PUBLISHED,
        "published_source": "second-hand (leaderboards and notes quoting the papers), not the "
        "papers' own tables",
    }
    out = RESULTS / "bpd_families.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    for name, row in rows.items():
        print(f"| {name} | {row['test_bpd']} | {row['training_images']:,} images | "
              f"{row['train_wall_s']:.0f} s |")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
