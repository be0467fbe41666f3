"""Published numbers genlab compares against, each with its source (see ../shared/REFERENCES.md).

`genlab compare` adds a row for every reference whose dataset, metric and (where the reference
names one) evaluation split match the compared runs' `data.name` and `data.eval_split`.
Compare like with like: same data, split, metric and sample count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    name: str
    dataset: str  # matches config.data.name
    metric: str  # a genlab metric name, e.g. eval/loss
    value: float
    source: str
    note: str = ""
    split: str = ""  # the config's data.eval_split it was measured on; "": not split-specific


REFERENCES: tuple[Reference, ...] = (
    Reference(
        "nanoGPT shakespeare-char (6L/6H/384d, 5000 iters, A100)",
        "tiny_shakespeare",
        "eval/loss",
        1.4697,
        "karpathy/nanoGPT README, config/train_shakespeare_char.py",
        "val split = last 10% of characters",
    ),
    Reference(
        "nanoGPT CPU recipe (4L/4H/128d, 2000 iters)",
        "tiny_shakespeare",
        "eval/loss",
        1.88,
        "karpathy/nanoGPT README",
    ),
    Reference(
        "nanoGPT GPT-2 124M from scratch (600k iters, 8xA100, ~4 days)",
        "openwebtext",
        "eval/loss",
        2.85,
        "karpathy/nanoGPT README, config/train_gpt2.py",
        "'~2.85'; val = 0.05% of documents (seed 2357), GPT-2 BPE",
    ),
    Reference(
        "OpenAI GPT-2 124M checkpoint, evaluated on OpenWebText",
        "openwebtext",
        "eval/loss",
        3.12,
        "karpathy/nanoGPT README, baselines table",
        "trained on WebText, not OWT (domain gap)",
    ),
    Reference(
        "VAE, 1 stochastic layer, k=1 (Burda et al. 2015, Table 1)",
        "binarized_mnist",
        "eval/nll",
        86.76,
        "Burda, Grosse, Salakhutdinov 2015 (IWAE), Table 1",
        "NLL by IWAE k=5000; dynamic binarization",
    ),
    Reference(
        "VAE, 2 stochastic layers, k=1 (Burda et al. 2015, Table 1)",
        "binarized_mnist",
        "eval/nll",
        85.33,
        "Burda, Grosse, Salakhutdinov 2015 (IWAE), Table 1",
        "NLL by IWAE k=5000; dynamic binarization",
    ),
    Reference(
        "DDPM (L_simple), CIFAR-10",
        "cifar10",
        "eval/fid",
        3.17,
        "Ho et al. 2020, Table 1",
        "50k samples vs train set",
    ),
    Reference(
        "DDPM (L_simple), CIFAR-10",
        "cifar10",
        "eval/bpd",
        3.75,
        "Ho et al. 2020, Table 1",
        "upper bound on NLL",
    ),
    Reference(
        "SNGAN (ResNet), CIFAR-10",
        "cifar10",
        "eval/fid",
        21.7,
        "Miyato et al. 2018 (via ../shared/REFERENCES.md)",
        "gan_cifar10.py:sngan is the paper's standard CNN, not this ResNet",
    ),
    Reference(
        "Transformer base, WMT14 En-De newstest2014",
        "wmt14",
        "eval/bleu",
        27.3,
        "Vaswani et al. 2017, Table 2",
        "tokenized BLEU with compound splitting (genlab: sacreBLEU, detokenized)",
        split="test",
    ),
)


def matching(dataset: str, metric: str, split: str | None = None) -> list[Reference]:
    """The references for runs on `dataset` that log `metric`, evaluated on `split`."""
    return [
        r
        for r in REFERENCES
        if r.dataset == dataset and r.metric == metric and r.split in ("", split)
    ]
