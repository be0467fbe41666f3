"""`genlab train | eval | sample | prepare | ...`: the command line over the trainer.

Every mistake in the user's input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from launch import distributed
from launch.config import (
    apply_overrides,
    config_from_args,
    read_config,
    split_config_args,
)
from launch.cpu_devices import plan_devices, split_cpu
from launch.rate import add_rate_parser
from train.errors import UserError
from train.metadata import CONFIG_FILE

if TYPE_CHECKING:
    from launch.sweep import Run, Sweep

# Failures of the machine rather than of genlab: said in one line, like a user's mistake.
SYSTEM_LIMITS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a UserError (one line, exit 2) instead of a usage dump."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def _train(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    if args.num_processes > 1 and args.coordinator is None:
        return distributed.launch_local(_without_num_processes(args.argv), args.num_processes)
    workdir = Path(args.workdir)
    if spec is None:
        if not (workdir / CONFIG_FILE).is_file():
            raise UserError(
                "train: --config experiments/NAME.py[:variant] is required for a new workdir"
            )
        config = read_config(workdir / CONFIG_FILE)
        apply_overrides(config, overrides)
    else:
        config = config_from_args(spec, overrides)
    split_cpu(config)
    distributed.initialize(
        args.coordinator, args.process_count, args.process_id, args.distributed_timeout
    )
    from train.trainer import Stopped, Trainer

    trainer = Trainer(config, workdir)
    try:
        metrics = trainer.run()
    except Stopped as stopped:
        print(f"genlab: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    if trainer.is_lead:
        print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))
        sample = workdir / "samples"
        latest = sorted(sample.glob("*.txt"))[-1:] if sample.is_dir() else []
        if latest:
            print(f"--- sample ({latest[0].name}) ---\n{latest[0].read_text()}")
    return 0


def _without_num_processes(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num_processes":
            skip = True
        elif not arg.startswith("--num_processes="):
            kept.append(arg)
    return kept


def _workdir_config(workdir: Path, overrides: dict[str, str]):
    """A workdir's saved config; `overrides` change evaluation settings, not the model."""
    fixed = [key for key in overrides if key == "task" or key.startswith(("model.", "task."))]
    if fixed:
        raise UserError(
            f"--config.{fixed[0]}: a trained run's task and model cannot be changed here; "
            "allowed: evaluation, data and sampling settings"
        )
    config = read_config(workdir / CONFIG_FILE)
    apply_overrides(config, overrides)
    return config


FID_FLAGS = {"num_samples": "num_samples", "fid_weights": "weights", "fid_cache": "cache"}


def _eval(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    """`--metric NAME` runs that evaluator (train/evaluators/); `task` (the default) runs every
    evaluator the run's config runs during training, samples aside."""
    from train import evaluators

    if args.metric != "task" and args.metric not in evaluators.available():
        allowed = ", ".join(["task", *evaluators.available()])
        raise UserError(f"--metric={args.metric}: unknown evaluator; allowed: {allowed}")
    settings = {key: getattr(args, flag) for flag, key in FID_FLAGS.items()}
    settings["split"] = args.fid_split
    if args.metric != "fid":
        given = [flag for flag, key in FID_FLAGS.items() if settings[key] is not None]
        if given or args.fid_split is not None:
            flag = given[0] if given else "fid_split"
            raise UserError(f"--{flag} is a setting of --metric fid; here --metric={args.metric}")
    settings = {key: value for key, value in settings.items() if value is not None}
    workdir = Path(args.workdir)
    if args.metric == "fid":  # Inception dominates: one XLA device per core (fid.py says why)
        overrides = {"mesh.cpu_devices": "-1", **overrides}
    config = _workdir_config(workdir, overrides)
    split_cpu(config)  # before jax starts
    from train.trainer import evaluate_run

    names = None if args.metric == "task" else [args.metric]
    if args.metric == "fid":  # a count too small for FID fails before any restore or sampling
        from train.evaluators import fid as fid_evaluator
        from train.metrics.fid import check_rank

        configured = config.get("evals", {}).get("fid", {}).get("num_samples")
        default = fid_evaluator.Evaluator.defaults["num_samples"]
        check_rank(int(settings.get("num_samples") or configured or default))
    per_example: dict = {}
    step, record = evaluate_run(config, workdir, args.step, per_example, names, settings)
    if args.scores:
        if not per_example:
            raise UserError(f"--scores: task {config.task!r} gives no per-example scores")
        import numpy as np

        np.savez(args.scores, **per_example)
    print(json.dumps({"step": step, **record}))
    return 0


def _sample(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    """Text from a text sampler (LMs, translation); a PNG grid from an image sampler (VAE,
    GAN, diffusion)."""
    if args.temperature < 0:
        raise UserError(f"--temperature={args.temperature}: must be >= 0 (0 is greedy)")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top_p={args.top_p}: must lie in (0, 1]")
    if args.top_k < 0:
        raise UserError(f"--top_k={args.top_k}: must be >= 0 (0 keeps every token)")
    import jax

    from train.capabilities import ImageSampler, TextSampler, TextSampling, has, require
    from train.data.splits import NONE
    from train.trainer import restore_run

    workdir = Path(args.workdir)
    config = _workdir_config(workdir, {"mesh.data": "1", "mesh.fsdp": "1", "mesh.tensor": "1"})
    # Sampling needs no sharding: one device works whatever mesh trained the run.
    task, state, _, step = restore_run(config, workdir, args.step, jax.devices()[:1], NONE)
    if has(task, ImageSampler) and not has(task, TextSampler):
        return _sample_images(require(task, ImageSampler, "sample"), state, step, args, workdir)
    sampler = require(task, TextSampler, "sample")
    vocab = sampler.vocab_size()
    if args.top_k > vocab:
        raise UserError(
            f"--top_k={args.top_k}: the vocabulary has {vocab} tokens; allowed: 0..{vocab}"
        )
    prompt = unescape(args.prompt)
    settings = TextSampling(args.num_tokens, args.seed, args.temperature, args.top_k, args.top_p)
    print(prompt + sampler.sample_text(state, prompt, settings))
    return 0


def _sample_images(task, state, step: int, args: argparse.Namespace, workdir: Path) -> int:
    """`--num_images` samples drawn with `--seed`, as one PNG grid; its path is printed."""
    import numpy as np

    from train.pictures import save_grid

    images = np.concatenate(list(task.sample_images(state, args.num_images, args.seed)))
    default = workdir / "samples" / f"sample_step{step}_seed{args.seed}_n{args.num_images}.png"
    path = save_grid(images, Path(args.out) if args.out else default, args.columns)
    print(path)
    return 0


ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` in a prompt typed on a command line; every other character as typed
    (non-ASCII included), a lone backslash too."""
    return re.sub(r"\\([nt\\])", lambda m: ESCAPES[m.group(1)], text)


def _sweep(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    import shlex

    from launch import backends, sweep

    sweep_file = Path(args.sweep_file)
    definition = sweep.load_sweep(args.sweep_file)
    root = Path(args.root or Path("runs") / "sweeps" / sweep_file.stem).absolute()
    runs = sweep.expand(definition, sweep_file, root)
    if args.dry_run:
        for run in runs:
            print(f"{run.name}\n  {shlex.join(run.command)}")
        print(f"{len(runs)} runs in {root}")
        return 0
    sweep.claim_folder(root, sweep_file)
    if args.status:
        return _sweep_status(root, sweep_file, definition, runs)
    resources = {
        **definition.slurm,
        **{k: v for k, v in vars(args).items() if k in backends.SLURM_KEYS and v is not None},
    }
    if args.backend == "slurm":
        backends.resolve_resources(resources)  # a bad value is an error before anything is written
    # Runs launched before keep their job ids; those still in SLURM's queue are not submitted
    # again (a second job would only find the workdir locked).
    previous = sweep.manifest_jobs(root) if args.backend == "slurm" else {}
    known = backends.slurm_status(runs, previous)
    queued = {
        name: entry
        for name, entry in known.items()
        if entry["status"] in ("pending", "running", "requeued")
    }
    todo = [run for run in runs if sweep.run_status(run) != "done" and run.name not in queued]
    skipped = len(runs) - len(todo) - len(queued)
    waiting = f", {len(queued)} still queued or running on SLURM" if queued else ""
    print(f"{len(runs)} runs in {root}: {skipped} already done{waiting}, {len(todo)} to run")
    sweep.write_manifest(root, sweep_file, definition, runs, {}, known)
    if args.backend == "local":
        status = backends.run_local(todo, args.parallel, args.devices_per_run)
        sweep.write_manifest(root, sweep_file, definition, runs, status)
        failed = [name for name, s in status.items() if s != "done"]
        return 1 if failed else 0
    jobs = backends.submit_slurm(todo, root, resources) if todo else []
    submitted = {
        run.name: {"status": "pending", "job_id": str(job.job_id)}
        for run, job in zip(todo, jobs, strict=True)
    }
    details = {**known, **submitted}
    status = {name: entry["status"] for name, entry in details.items()}
    sweep.write_manifest(root, sweep_file, definition, runs, status, details)
    for name, entry in submitted.items():
        print(f"submitted (job {entry['job_id']}): {name}")
    return 0


def _sweep_status(root: Path, sweep_file: Path, definition: Sweep, runs: list[Run]) -> int:
    """Print and record each run's status: pending, running, requeued, done or failed (SLURM:
    with its job id and SLURM's own state), or interrupted for a local run with a checkpoint."""
    from launch import backends, sweep

    if not (root / sweep.MANIFEST).is_file():
        raise UserError(f"sweep --status: no {sweep.MANIFEST} in {root}; launch the sweep first")
    details = backends.slurm_status(runs, sweep.manifest_jobs(root))
    status = {name: entry["status"] for name, entry in details.items()}
    sweep.write_manifest(root, sweep_file, definition, runs, status, details)
    for entry in sweep.read_manifest(root)["runs"]:
        job = entry.get("job_id") or "-"
        said = [entry.get("slurm_state"), entry.get("slurm_reason")]
        if entry.get("restarts"):
            said.append(f"restarts {entry['restarts']}")
        slurm = f"  (SLURM: {', '.join(s for s in said if s)})" if said[0] else ""
        print(
            f"{entry['status']:<11} {job:<12} checkpoint {entry['checkpoint']}  "
            f"{entry['name']}{slurm}"
        )
    return 0


def _compare(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    from launch.compare import compare

    ratings = Path(args.ratings) if args.ratings else None
    for path in compare(args.dirs, args.metric, Path(args.out), ratings):
        print(path)
    return 0


def _plan(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    """Compile the train step for `--topology` without its hardware (train/plan/)."""
    if spec is None:
        raise UserError("plan: --config experiments/NAME.py:VARIANT is required")
    if args.hbm_gib is not None and args.hbm_gib <= 0:
        raise UserError(f"--hbm_gib={args.hbm_gib} is not allowed; allowed: > 0")
    config = config_from_args(spec, overrides)
    plan_devices(args.topology)  # before jax starts
    from train.plan import make_plan
    from train.plan.report import text_report
    from train.plan.targets import GIB, resolve

    target = resolve(args.topology, args.device)
    hbm = args.hbm_gib * GIB if args.hbm_gib is not None else None
    plan = {"config": spec, "overrides": overrides, **make_plan(config, target, hbm)}
    out = Path(args.out or f"runs/plans/{_plan_name(spec, args.topology)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=1) + "\n")
    print(text_report(plan))
    print(f"written: {out}")
    return 0


def _prepare(args: argparse.Namespace, spec: str | None, overrides: dict[str, str]) -> int:
    """Tokenize the corpus `data.prepare` names into token shards in `--out` (train/data/)."""
    if spec is None:
        raise UserError("prepare: --config experiments/NAME.py:VARIANT is required")
    config = config_from_args(spec, overrides)
    from train.data.prepare import prepare

    out = Path(args.out)
    manifest, done_before = prepare(config, out)
    splits = manifest["splits"]
    counts = ", ".join(
        f"{name}: {s['tokens']:,} tokens, {len(s['shards'])} shards, {s['documents']:,} documents"
        for name, s in splits.items()
    )
    if done_before:
        print(f"{out} is done already ({counts}); nothing to do")
    else:
        print(f"wrote {out} in {manifest['seconds']} s ({counts}; {manifest['dtype']})")
    return 0


def _plan_name(spec: str, topology: str) -> str:
    stem = Path(spec.split(":")[0]).stem
    variant = spec.split(":")[1] if ":" in spec else "default"
    return re.sub(r"[^\w.-]", "_", f"{stem}_{variant}_{topology}")


def _parser() -> _Parser:
    parser = _Parser(prog="genlab", description="Train, evaluate and sample generative models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train (or resume) a run from an experiment config")
    train.add_argument("--workdir", required=True, help="run folder; resumed if it has checkpoints")
    train.add_argument(
        "--num_processes",
        type=int,
        default=1,
        help="start this many local processes joined by jax.distributed (testing)",
    )
    train.add_argument("--coordinator", default=None, help="host:port of process 0")
    train.add_argument("--process_count", type=int, default=None)
    train.add_argument("--process_id", type=int, default=None)
    train.add_argument(
        "--distributed_timeout",
        type=int,
        default=distributed.DEFAULT_TIMEOUT_S,
        help="seconds to wait for the other processes before giving up",
    )
    train.set_defaults(run=_train)

    evaluation = sub.add_parser("eval", help="evaluate a run's checkpoint")
    evaluation.add_argument("--workdir", required=True)
    evaluation.add_argument(
        "--step", type=int, default=None, help="checkpoint step (default newest)"
    )
    evaluation.add_argument(
        "--metric",
        default="task",
        help="an evaluator (heldout, fid, bleu, samples; train/evaluators/) or task: every "
        "evaluator the run's config runs during training",
    )
    evaluation.add_argument(
        "--num_samples",
        type=int,
        default=None,
        help="fid: samples and reference images (>= 2049; default evals.fid.num_samples)",
    )
    evaluation.add_argument(
        "--fid_weights",
        default=None,
        help="folder of the FID Inception weights (.npz + layers.json); "
        "default ../shared/data/fid_inception_v3",
    )
    evaluation.add_argument(
        "--fid_cache", default=None, help="where reference statistics are cached"
    )
    evaluation.add_argument("--fid_split", default=None, help="reference split (default test)")
    evaluation.add_argument(
        "--scores",
        default=None,
        help="write per-example scores (e.g. NLL for anomaly detection) here",
    )
    evaluation.set_defaults(run=_eval)

    sample = sub.add_parser("sample", help="generate from a run's checkpoint")
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--step", type=int, default=None)
    sample.add_argument("--prompt", default="\n", help="start text (\\n escapes allowed)")
    sample.add_argument("--num_tokens", type=int, default=500)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top_k", type=int, default=0)
    sample.add_argument("--top_p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--num_images", type=int, default=64, help="image families: how many")
    sample.add_argument("--columns", type=int, default=8, help="image families: grid width")
    sample.add_argument(
        "--out", default=None, help="image families: the PNG (default WORKDIR/samples/...)"
    )
    sample.set_defaults(run=_sample)

    sweep = sub.add_parser("sweep", help="launch every run of a sweep file")
    sweep.add_argument("sweep_file", help="experiments/sweeps/NAME.py defining get_sweep()")
    sweep.add_argument("--backend", choices=("local", "slurm"), default="local")
    sweep.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the runs and their exact commands, run nothing",
    )
    sweep.add_argument("--root", default=None, help="sweep folder (default runs/sweeps/NAME)")
    sweep.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    sweep.add_argument(
        "--devices_per_run",
        type=int,
        default=0,
        help="local: GPUs given to each parallel run (CUDA_VISIBLE_DEVICES)",
    )
    sweep.add_argument(
        "--status",
        action="store_true",
        help="print each run's status (and SLURM job id and state) and update sweep.json",
    )
    for key, kind, words in (
        ("nodes", int, "nodes per run"),
        ("gpus_per_node", int, "GPUs per node (0 or unset: a CPU job, no GPU request)"),
        ("tasks_per_node", int, "processes per node (default: one per GPU, or 1)"),
        ("cpus_per_task", int, "CPUs per process"),
        ("mem_gb_per_task", float, "memory per process in GB"),
        ("timeout_min", int, "time limit in minutes"),
        ("partition", str, "partition"),
        ("account", str, "account"),
    ):
        sweep.add_argument(f"--{key}", type=kind, default=None, help=f"slurm: {words}")
    sweep.set_defaults(run=_sweep)

    plan = sub.add_parser(
        "plan", help="compile the train step for a TPU slice or N devices this machine lacks"
    )
    plan.add_argument(
        "--topology",
        required=True,
        help="a TPU slice (v5p-256, v5e-256, v4-8, v6e-64; needs .[plan]) or cpu:N",
    )
    plan.add_argument(
        "--device",
        default=None,
        help="device figures for cpu:N estimates (h100, h200, a100, v5p, ...)",
    )
    plan.add_argument("--hbm_gib", type=float, default=None, help="memory per device to fit in")
    plan.add_argument("--out", default=None, help="JSON (default runs/plans/NAME.json)")
    plan.set_defaults(run=_plan)

    prep = sub.add_parser(
        "prepare", help="tokenize a corpus into token shards for data.source=shards"
    )
    prep.add_argument("--out", required=True, help="folder of the shards and their manifest")
    prep.set_defaults(run=_prepare)

    comparison = sub.add_parser("compare", help="tables and plots across runs and sweeps")
    comparison.add_argument(
        "dirs", nargs="*", help="run workdirs and/or sweep folders (default: the rated runs)"
    )
    comparison.add_argument(
        "--ratings", default=None, help="a genlab rate store: add win rates and Bradley-Terry"
    )
    comparison.add_argument(
        "--metric",
        action="append",
        default=None,
        help="metric to tabulate and plot (repeatable; default eval/loss)",
    )
    comparison.add_argument("--out", default="report")
    comparison.set_defaults(run=_compare)

    add_rate_parser(sub)
    return parser


# Numeric flags and their least allowed value (flags a command lacks are skipped).
FLAG_MINIMUMS = {
    "num_processes": 1,
    "process_count": 1,
    "process_id": 0,
    "distributed_timeout": 1,
    "step": 0,
    "num_samples": 1,
    "num_tokens": 1,
    "num_images": 1,
    "columns": 1,
    "parallel": 1,
    "devices_per_run": 0,
    "nodes": 1,
    "gpus_per_node": 0,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "timeout_min": 1,
}


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag within its range, as one line naming the flag."""
    for name, low in FLAG_MINIMUMS.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise UserError(f"--{name}={value} is not allowed; allowed: >= {low}")


def run(argv: list[str]) -> int:
    spec, overrides, rest = split_config_args(argv)
    args = _parser().parse_args(rest)
    check_flags(args)
    args.argv = argv
    command: Callable[..., int] = args.run
    return command(args, spec, overrides)


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"genlab: error: {error}", file=sys.stderr)
        code = 2
    except OSError as error:
        if error.errno not in SYSTEM_LIMITS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"genlab: error: {error.strerror}{where}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
