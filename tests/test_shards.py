"""Token shards: `genlab prepare` writes exactly what its manifest counts, once, and never leaves
a shard that looks complete when interrupted; a `data.source=shards` run learns, resumes bit for
bit and splits each batch between processes; bad input is one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import tokenizers as hf
from conftest import REPO, SHAKESPEARE, assert_checkpoints_equal, genlab
from tokenizers import decoders, models, pre_tokenizers, trainers

from launch.cli import main
from launch.config import apply_overrides, load_config
from train.data import shard_writer
from train.data.prepare import held_out, prepare
from train.data.shards import (
    MANIFEST_FILE,
    ShardFolder,
    ShardWindows,
    fingerprint,
    shard_dtype,
)
from train.data.splits import NONE
from train.data.tokenizers import load_tokenizer, save_tokenizer
from train.errors import UserError
from train.logging import read_metrics
from train.tasks import build_task
from train.trainer import train

CONFIG = REPO / "experiments" / "openwebtext_gpt2.py"


def _corpus(folder: Path, chars: int = 8000) -> Path:
    """The first paragraphs (speeches) of Tiny Shakespeare, about `chars` long."""
    text = SHAKESPEARE.read_text()
    path = folder / "corpus.txt"
    path.write_text(text[: text.rfind("\n\n", 0, chars)])
    return path


def _paragraphs(corpus: Path) -> list[str]:
    return [p for p in corpus.read_text().split("\n\n") if p]


def _config(corpus: Path, **overrides: str):
    config = load_config(f"{CONFIG}:test")
    apply_overrides(config, {"data.prepare.files": str(corpus), **overrides})
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> Path:
    """A folder prepared in this process, one tokenizing process."""
    out = tmp_path_factory.mktemp("shards")
    prepare(_config(corpus), out)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".bin"}


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_prepare_writes_what_the_manifest_counts_in_parallel_as_in_one_process(
    corpus, shards, tmp_path
):
    out = tmp_path / "parallel"
    result = genlab(
        "prepare", "--config", f"{CONFIG}:test", "--out", str(out),
        f"--config.data.prepare.files={corpus}", "--config.data.prepare.num_proc=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert _files(out) == _files(shards)  # two processes write the very same shards

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == "uint16" and manifest["eot"] == {
        "token": "</s>", "id": 2, "placement": "after every document"
    }  # fmt: skip
    tokenizer = load_tokenizer(out)
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["tokenizer"]["sha256"] == fingerprint(tokenizer) == digest
    documents = _paragraphs(corpus)
    held = held_out(np.arange(len(documents)), 0.1, 2357)
    assert 0 < held.sum() < len(documents)
    for split, mine in (("train", ~held), ("val", held)):
        entry = manifest["splits"][split]
        files = [np.fromfile(out / s["file"], np.uint16) for s in entry["shards"]]
        assert [len(f) for f in files] == [s["tokens"] for s in entry["shards"]]
        assert all(len(f) == 2048 for f in files[:-1])  # data.prepare.shard_tokens
        tokens = np.concatenate(files)
        assert len(tokens) == entry["tokens"]
        texts = [d for d, m in zip(documents, mine, strict=True) if m]
        assert entry["documents"] == len(texts) and entry["chars"] == sum(map(len, texts))
        ends = np.flatnonzero(tokens == 2)  # each document's ids, then </s>
        assert len(ends) == len(texts) and ends[-1] == len(tokens) - 1
        pieces = np.split(tokens, ends + 1)[:-1]
        assert [tokenizer.decode(p[:-1]) for p in pieces] == texts


def test_a_rerun_changes_nothing_and_other_settings_are_refused(capsys, corpus, shards):
    times = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    argv = ["prepare", "--config", f"{CONFIG}:test", "--out", str(shards)]
    with pytest.raises(SystemExit) as finished:
        main([*argv, f"--config.data.prepare.files={corpus}"])
    assert finished.value.code == 0
    assert "is done already" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == times
    files = f"--config.data.prepare.files={corpus}"
    err = _one_line_error(capsys, [*argv, files, "--config.data.prepare.shard_tokens=999"])
    assert "holds shards prepared with other settings (shard_tokens differ)" in err
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == times


def test_an_interrupted_prepare_leaves_no_complete_looking_shard(
    capsys, corpus, shards, tmp_path, monkeypatch
):
    out = tmp_path / "interrupted"
    real = shard_writer.write_atomically
    written = []

    def killed_before_the_second_rename(path: Path, data) -> None:
        if written:  # the second shard: on disk under its temporary name, never renamed
            path.with_name(path.name + ".tmp").write_bytes(np.asarray(data).tobytes())
            raise KeyboardInterrupt
        written.append(path)
        real(path, data)

    monkeypatch.setattr(shard_writer, "write_atomically", killed_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(corpus), out)
    monkeypatch.undo()
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["train_00000.bin", "train_00001.bin.tmp"]
    err = _one_line_error(
        capsys,
        ["train", "--config", f"{CONFIG}:test", "--workdir", str(tmp_path / "run"),
         f"--config.data.path={out}"],
    )  # fmt: skip
    assert "holds no manifest.json: its shards are unfinished" in err

    prepare(_config(corpus), out)  # a rerun starts afresh and finishes
    assert not list(out.glob("*.tmp"))
    assert _files(out) == _files(shards)


def test_a_shards_run_learns_and_resumes_bit_for_bit(shards, tmp_path):
    config = load_config(f"{CONFIG}:test")
    apply_overrides(
        config,
        {
            "data.path": str(shards),
            "mesh.data": "1",
            "train.steps": "40",
            "train.checkpoint_every": "20",
            "train.eval_every": "40",
        },
    )
    one = jax.devices()[:1]
    metrics = train(config, tmp_path / "straight", devices=one)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "straight") if "train/loss" in r]
    assert losses[0] > 5.0  # steps 1-10 start near ln(300) = 5.7
    assert losses[-1] < losses[0] - 1.0 and metrics["eval/loss"] < losses[0]
    assert metrics["eval/bpc"] > 0
    sample = (tmp_path / "straight" / "samples" / "step_0000040.txt").read_text()
    assert sample  # decoded with the shards' tokenizer, which the run keeps
    assert fingerprint(load_tokenizer(tmp_path / "straight")) == fingerprint(load_tokenizer(shards))

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "40")  # as if killed after step 20
    train(config, tmp_path / "resumed", devices=one)
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 40)


def test_two_processes_read_the_rows_of_one(shards):
    windows = ShardFolder(str(shards)).windows("train", 32, "data.train_split")
    assert len(windows.paths) == 3  # windows are drawn across shards
    for step in range(5):
        whole = windows.batch(1337, step, 8)
        halves = [windows.batch(1337, step, 8, process_index=i, process_count=2) for i in (0, 1)]
        for key in ("inputs", "targets"):
            assert all(h[key].shape == (4, 32) for h in halves)
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_windows_are_slices_of_one_shard_and_reach_every_one(tmp_path):
    sizes = (50, 7, 40)  # the middle shard is shorter than a window: never drawn
    paths = []
    for index, size in enumerate(sizes):
        paths.append(tmp_path / f"train_{index:05d}.bin")
        (1000 * index + np.arange(size, dtype=np.uint16)).tofile(paths[-1])
    windows = ShardWindows(tuple(paths), sizes, "uint16", block_size=9)
    assert windows.num_windows == (50 - 9) + (40 - 9)
    rows = windows.read(np.arange(windows.num_windows))
    assert rows.dtype == np.int32 and rows.shape == (72, 10)
    np.testing.assert_array_equal(np.diff(rows, axis=1), 1)  # consecutive tokens
    np.testing.assert_array_equal(rows[:, 0], [*range(41), *range(2000, 2031)])
    batch = windows.batch(0, 3, 64)
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    with pytest.raises(UserError, match="too long for the split"):
        ShardWindows(tuple(paths), sizes, "uint16", block_size=50)


def test_bad_shard_inputs_are_one_line_errors(capsys, corpus, shards, tmp_path):
    train_argv = ["train", "--config", f"{CONFIG}:test", "--workdir", str(tmp_path / "run")]
    err = _one_line_error(capsys, [*train_argv, f"--config.data.path={tmp_path / 'none'}"])
    assert (
        "data.path=" in err and "no such folder; give the --out folder of `genlab prepare`" in err
    )
    err = _one_line_error(capsys, train_argv)
    assert "data.path is empty: data.source=shards needs the folder" in err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(shards, unfinished)
    (unfinished / MANIFEST_FILE).unlink()
    err = _one_line_error(capsys, [*train_argv, f"--config.data.path={unfinished}"])
    assert "holds no manifest.json" in err
    path = f"--config.data.path={shards}"
    err = _one_line_error(capsys, [*train_argv, path, "--config.data.eval_split=test"])
    assert "data.eval_split='test' is not a split of data.path=" in err
    assert "allowed: train, val" in err
    err = _one_line_error(capsys, [*train_argv, path, "--config.data.vocab_size=100"])
    assert "data.vocab_size=100 is smaller than the shards' tokenizer (300 entries)" in err

    # a run's tokenizer against shards of another one: its ids would change meaning
    other = tmp_path / "other"
    prepare(_config(corpus, **{"data.vocab_size": "280"}), other)
    workdir = tmp_path / "existing"
    workdir.mkdir()
    save_tokenizer(load_tokenizer(shards), workdir)  # what a run on `shards` keeps
    before = sorted(p.name for p in workdir.iterdir())
    argv = ["train", "--config", f"{CONFIG}:test", "--workdir", str(workdir)]
    err = _one_line_error(capsys, [*argv, f"--config.data.path={other}"])
    assert "holds shards of another tokenizer than the run in --workdir" in err
    assert sorted(p.name for p in workdir.iterdir()) == before

    prepare_argv = ["prepare", "--config", f"{CONFIG}:test", "--out", str(tmp_path / "new")]
    err = _one_line_error(capsys, [*prepare_argv, "--config.data.prepare.files=/no/such.txt"])
    assert "data.prepare.files='/no/such.txt': no such file" in err
    err = _one_line_error(
        capsys,
        [*prepare_argv, f"--config.data.prepare.files={corpus}", "--config.data.tokenizer=char"],
    )
    assert "data.tokenizer='char': genlab prepare writes subword shards" in err
    err = _one_line_error(capsys, [*prepare_argv, f"--config.data.prepare.files={corpus}",
                                   "--config.data.val_fraction=0.0001"])  # fmt: skip
    assert "left the val split empty" in err


def test_a_given_tokenizer_json_ends_documents_with_its_endoftext(capsys, corpus, tmp_path):
    """GPT-2's way: a byte-level BPE tokenizer.json with <|endoftext|>, given as a file."""
    gpt2_like = hf.Tokenizer(models.BPE())
    gpt2_like.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2_like.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    gpt2_like.train_from_iterator(_paragraphs(corpus), trainer)
    file = tmp_path / "gpt2_like.json"
    file.write_text(gpt2_like.to_str(pretty=True))
    out = tmp_path / "shards"
    manifest, done = prepare(_config(corpus, **{"data.tokenizer_path": str(file)}), out)
    eot = gpt2_like.token_to_id("<|endoftext|>")
    assert not done and manifest["eot"]["token"] == "<|endoftext|>" and manifest["eot"]["id"] == eot
    assert manifest["tokenizer"]["origin"] == str(file)
    tokens = np.fromfile(out / "val_00000.bin", np.uint16)
    assert (tokens == eot).sum() == manifest["splits"]["val"]["documents"]
    assert shard_dtype(65536) == np.uint16 and shard_dtype(65537) == np.uint32

    argv = ["prepare", "--config", f"{CONFIG}:124m", "--out", str(tmp_path / "owt")]
    err = _one_line_error(capsys, [*argv, "--config.data.tokenizer_path=/no/gpt2.json"])
    assert "data.tokenizer_path='/no/gpt2.json': no such file" in err


def test_the_124m_recipe_is_nanogpts_gpt2_small(shards):
    config = load_config(f"{CONFIG}:124m")
    apply_overrides(config, {"data.path": str(shards)})  # any shards: the vocabulary is padded
    t, o = config.train, config.optim
    assert t.batch_size * config.data.block_size == 491_520  # 12 x 1024 x 5 x 8 GPUs
    assert (t.batch_size // t.grad_accum) % 8 == 0  # 12 rows per device per micro-step on 8
    assert (o.lr, o.min_lr, o.warmup_steps, o.decay_steps) == (6e-4, 6e-5, 2000, 600_000)
    assert (o.b2, o.weight_decay, o.clip_norm, t.steps) == (0.95, 0.1, 1.0, 600_000)
    task = build_task(config, splits=NONE)
    shapes = jax.eval_shape(task.init_state, jax.random.key(0))
    params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes.params)))
    assert task.vocab_size() == 50304 and params == 124_373_760
