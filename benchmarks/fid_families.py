"""One FID table across the image families: `python benchmarks/fid_families.py [--root DIR]`.

GAN, VAE, diffusion and pixel-Transformer samples on MNIST, each scored by `genlab eval --metric
fid` with the same FID Inception, the same reference (the first 10,000 MNIST test images), the
same 10,000 samples and the same resize, beside the real-vs-real floor (`fid_reference.json`:
MNIST train 10k vs test 10k). The GAN and diffusion rows are their committed `cpu` results
(`gan_cpu.json`, `diffusion_cpu.json`, scored the same way); this script trains the VAE's and the
pixel LM's `cpu` variants and scores them (stages finished under `--root` are kept, so with
bpd_families.py's `--root` the pixel LM is that script's run). It writes
`benchmarks/results/fid_families.json` and `fid_families.png`: the runs' final 8x8 sample grids
side by side, each drawn from its config's fixed sampling seed (a rerun of a result script redraws
the same picture: the VAE's grid from this script's run is byte-identical to the committed
`vae_cpu/samples.png`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import DATA, REPO, timed, trained_run

RESULTS = REPO / "benchmarks" / "results"
SAMPLES = 10_000
GRIDS = {  # the committed final sample grid of each family's `cpu` run
    "GAN": "gan_cpu/samples.png",
    "VAE": "vae_cpu/samples.png",
    "diffusion (DDIM-50)": "diffusion_cpu/samples.png",
    "pixel Transformer": "bpd_families/pixel_lm_samples.png",
}


def fid_row(root: Path, name: str, config: str, data: Path, images: str) -> dict:
    """Train `config` (unless `root` has the run) and score FID/KID of its samples."""
    trained, workdir = trained_run(root, name, config, data)
    scores, _ = timed(
        "fid_eval", root / f"{name}.fid.json",
        "eval", "--workdir", str(workdir), "--metric", "fid", "--num_samples", str(SAMPLES),
    )  # fmt: skip
    return {
        "config": config,
        "fid": round(scores["eval/fid"], 2),
        "kid": scores.get("eval/kid"),
        "samples": scores.get("fid/num_samples", SAMPLES),
        "images": images,
        "train_wall_s": trained["train_wall_s"],
        "fid_eval_wall_s": scores["fid_eval_wall_s"],
        "step": scores["step"],
    }


def committed(name: str, config: str) -> dict:
    result = json.loads((RESULTS / f"{name}.json").read_text())
    return {
        "config": config,
        "fid": result["fid"],
        "samples": result["fid_samples"],
        "train_wall_s": result["train_wall_s"],
        "fid_eval_wall_s": result["fid_eval_wall_s"],
        "from": f"benchmarks/results/{name}.json",
    }


def draw_figure(fids: dict[str, float]) -> Path:
    """The three families' sample grids in one picture, titled with their FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    figure, axes = plt.subplots(1, len(GRIDS), figsize=(4 * len(GRIDS), 4.4))
    for axis, (name, grid) in zip(axes, GRIDS.items(), strict=True):
        with Image.open(RESULTS / grid) as picture:
            axis.imshow(picture, cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"{name}: FID {fids[name.split()[0]]:.2f}")
        axis.axis("off")
    figure.tight_layout()
    out = RESULTS / "fid_families.png"
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "mnist"))
    parser.add_argument("--root", default="", help="where the runs go; finished stages are kept")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="fid_families_"))
    data = Path(args.data).resolve()
    floor = json.loads((RESULTS / "fid_reference.json").read_text())
    rows = {
        "GAN (hinge + spectral norm, cpu)": committed("gan_cpu", "experiments/gan_mnist.py:cpu"),
        "VAE (1 stochastic layer, cpu)": fid_row(
            root,
            "vae",
            "experiments/vae_mnist.py:cpu",
            data,
            "decoder means of prior samples (Bernoulli means, dynamically binarized training data)",
        ),
        "diffusion (DDPM U-Net, cpu)": committed(
            "diffusion_cpu", "experiments/diffusion_mnist.py:cpu"
        ),
        "pixel Transformer (ImageGPT-style, cpu)": fid_row(
            root,
            "pixel_lm",
            "experiments/pixel_lm_mnist.py:cpu",
            data,
            "pixels drawn in raster order at temperature 1 (the run bpd_families.py scores)",
        ),
    }
    record = {
        "reference": "MNIST test, first 10,000 images",
        "samples_per_model": SAMPLES,
        "network": "FID Inception-v3 (models/inception.py), pool3 features",
        "floor_real_vs_real": floor["pairs"][0],
        "models": rows,
    }
    (RESULTS / "fid_families.json").write_text(json.dumps(record, indent=1) + "\n")
    draw_figure({name.split()[0]: row["fid"] for name, row in rows.items()})
    for name, row in rows.items():
        print(f"| {name} | {row['fid']} | {row['train_wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
