"""The diffusion `cpu` result: `python benchmarks/diffusion_cpu.py [--variant cpu|dit_cpu]`.

Runs the documented commands: `genlab train` on `experiments/diffusion_mnist.py:<variant>`, then
`genlab eval` for the variational bound in bits/dim on all 10,000 MNIST test images (the KL
terms of t = 1..T-1 estimated by stratified sampling over `--bpd_timesteps` strata; the prior and
decoder terms exact), then `genlab eval --metric fid` on 10,000 EMA samples (the variant's DDIM
sampler) against the first 10,000 test images. Each stage is skipped when its output exists, so
an interrupted run resumes. Writes `benchmarks/results/diffusion_<variant>.json` and the final
sample grid and denoising strip to `benchmarks/results/diffusion_<variant>/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATA, copy_newest, steps_per_second, timed  # noqa: E402
from train.metadata import collect  # noqa: E402

# Published CIFAR-10 numbers for context (not the same data: no MNIST figures are published
# for this recipe). Ho et al. 2020, Table 1.
CONTEXT = {
    "ddpm_cifar10_fid_50k": 3.17,
    "ddpm_cifar10_nll_bits_per_dim": "<= 3.75 (L_simple), <= 3.70 (full bound, fixed variance)",
    "fid_mnist_train_vs_test_10k": "benchmarks/results/fid_reference.json",
}
SAMPLER_KEYS = ("sampler", "sample_steps", "eta", "variance", "guidance", "clip_x0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="cpu", choices=("cpu", "dit_cpu"))
    parser.add_argument("--data", default=str(DATA / "mnist"))
    parser.add_argument("--workdir", default="")
    parser.add_argument("--num_samples", type=int, default=10_000)
    parser.add_argument("--bpd_timesteps", type=int, default=50)
    parser.add_argument("--out", default="")
    parser.add_argument("--train_overrides", nargs="*", default=[], help="--config.k=v for tests")
    args = parser.parse_args()
    workdir = Path(args.workdir or REPO / f"runs/diffusion_{args.variant}")
    out = Path(args.out or REPO / f"benchmarks/results/diffusion_{args.variant}.json")
    workdir.mkdir(parents=True, exist_ok=True)

    config = f"experiments/diffusion_mnist.py:{args.variant}"
    train, train_wall = timed(
        "train",
        workdir / "result_train.json",
        *("train", "--config", config, "--workdir", str(workdir)),
        *(f"--config.data.path={args.data}", "--config.train.progress_bar=false"),
        *args.train_overrides,
    )
    bound, bound_wall = timed(
        "bound",
        workdir / "result_bound.json",
        *("eval", "--workdir", str(workdir), "--config.data.eval_examples=0"),
        f"--config.eval.bpd_timesteps={args.bpd_timesteps}",
    )
    scores, fid_wall = timed(
        "fid",
        workdir / "result_fid.json",
        *("eval", "--workdir", str(workdir), "--metric", "fid"),
        *("--num_samples", str(args.num_samples)),
    )

    pictures = out.with_suffix("")
    copy_newest(workdir / "samples", "samples", pictures / "samples.png")
    copy_newest(workdir / "samples", "denoising", pictures / "denoising.png")
    saved = json.loads((workdir / "config.json").read_text())
    result = {
        "benchmark": f"DDPM ({saved['model']['arch']} denoiser) on MNIST",
        "config": config,
        "steps": scores["step"],
        "batch_size": saved["train"]["batch_size"],
        "fid": round(scores["eval/fid"], 2),
        "kid": round(scores["eval/kid"], 5),
        "kid_std": round(scores["eval/kid_std"], 5),
        "fid_samples": scores["fid/num_samples"],
        "fid_reference": scores["fid/reference"],
        "fid_resize": scores["fid/resize"],
        "fid_inputs": scores["fid/inputs"],
        "sampler": {key: scores[f"fid/{key}"] for key in SAMPLER_KEYS if f"fid/{key}" in scores},
        "test_bpd": round(bound["eval/bpd"], 4),
        "test_nll_nats": round(bound["eval/nll"], 2),
        "bpd_prior": round(bound["eval/bpd_prior"], 5),
        "bpd_decoder": round(bound["eval/bpd_decoder"], 4),
        "bpd_kl_strata": args.bpd_timesteps,
        "bpd_test_images": 10_000,
        "test_loss": round(bound["eval/loss"], 5),
        "train_wall_s": train_wall or train.get("train_wall_s"),
        "steps_per_s": steps_per_second(workdir),
        "bound_eval_wall_s": bound_wall or bound.get("bound_wall_s"),
        "fid_eval_wall_s": fid_wall or scores.get("fid_wall_s"),
        "pictures": str(pictures.relative_to(REPO)),
        "context": CONTEXT,
        "environment": collect(sys.argv),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
