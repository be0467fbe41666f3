"""init_from and freeze: load by name and shape, keep frozen parameters fixed, resume from the run's
own checkpoint, fine-tuning beats training from scratch, and one-line errors."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import DATA, assert_checkpoints_equal, genlab, lm_config, train_args

from train import partitioning
from train.data.tokenizers import restrict_to_alphabet
from train.errors import UserError
from train.tasks import build_task
from train.trainer import place_state, train
from train.transfer import load_parameters, parameters

MULTI30K = DATA / "multi30k"
SOURCE_STEPS = 60


def _quiet(**overrides: str) -> dict[str, str]:
    return {"mesh.data": "1", "train.eval_every": "1000", **overrides}


def _saved_params(workdir, step: int) -> dict[str, np.ndarray]:
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return {name: np.asarray(leaf) for name, (_, leaf) in parameters(state).items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny Transformer LM trained briefly on Tiny Shakespeare: the run to transfer from."""
    workdir = tmp_path_factory.mktemp("source")
    steps = str(SOURCE_STEPS)
    config = lm_config(
        **_quiet(
            **{"train.steps": steps, "optim.lr": "1e-2", "optim.decay_steps": steps},
            **{"train.checkpoint_every": steps},
        )
    )
    train(config, workdir, devices=jax.devices()[:1])
    return workdir


def test_init_from_loads_matching_names_and_shapes_only(source, tmp_path):
    # One more layer (new), a narrower MLP (shape mismatch), rotary positions (pos_embed unused).
    overrides = {"model.num_layers": "3", "model.mlp_dim": "32", "model.pos_encoding": "rope"}
    config = lm_config(**_quiet(**overrides, init_from=f"{source}:{SOURCE_STEPS}"))
    task = build_task(config, workdir=tmp_path)
    mesh = partitioning.make_mesh(config.mesh, jax.devices()[:1])
    fresh, placement, _ = place_state(task, mesh, config.seed, None)
    state, report = load_parameters(fresh, placement.state, config.init_from)

    loaded = {name for name, _ in report.loaded}
    assert {"token_embed/embedding", "block_1/attn/qkv_kernel", "ln_final/LayerNorm_0/scale"} <= (
        loaded
    )
    assert "block_0/mlp/wi/kernel" in {name for name, _, _ in report.mismatched}
    assert "block_2/attn/qkv_kernel" in {name for name, _ in report.new}
    assert report.unused == ["pos_embed"]
    saved, now, before = _saved_params(source, SOURCE_STEPS), parameters(state), parameters(fresh)
    for name, (_, value) in now.items():
        expected = saved[name] if name in loaded else np.asarray(before[name][1])
        assert np.array_equal(np.asarray(value), expected), name
    assert report.lines()[0].startswith(f"init_from {source} (step {SOURCE_STEPS}): loaded ")


def test_frozen_parameters_stay_bit_identical_and_resume_skips_init_from(source, tmp_path, capsys):
    overrides = {"train.steps": "6", "train.checkpoint_every": "3"}
    config = lm_config(**_quiet(**overrides, init_from=str(source), freeze="^block_0/"))
    train(config, tmp_path / "straight", devices=jax.devices()[:1])
    printed = capsys.readouterr().out
    assert "init_from" in printed and "frozen       block_0/attn/qkv_kernel" in printed

    saved, tuned = _saved_params(source, SOURCE_STEPS), _saved_params(tmp_path / "straight", 6)
    frozen = [name for name in tuned if name.startswith("block_0/")]
    assert len(frozen) == 6  # attention, MLP and two norms
    for name in frozen:
        assert tuned[name].dtype == saved[name].dtype and np.array_equal(tuned[name], saved[name])
    assert not np.array_equal(tuned["block_1/attn/qkv_kernel"], saved["block_1/attn/qkv_kernel"])

    # A run with its own checkpoints resumes from them; init_from would undo steps 1-3.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    train(config, tmp_path / "resumed", devices=jax.devices()[:1])
    assert "init_from" not in capsys.readouterr().out
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 6)


def test_finetuning_beats_training_from_scratch_on_multi30k(source, tmp_path, capsys):
    multi30k = {
        "data.path": str(MULTI30K / "train.en.gz"),
        "data.val_path": str(MULTI30K / "val.en.gz"),
        "data.unknown_chars": "drop",  # digits, quotes, brackets: not in Shakespeare's alphabet
        "train.steps": "25",
        "optim.decay_steps": "25",
        "train.eval_batches": "8",
    }
    tuned = train(
        lm_config(**_quiet(**multi30k, init_from=str(source))),
        tmp_path / "tuned",
        devices=jax.devices()[:1],
    )
    assert "characters of" in capsys.readouterr().out  # the dropped ones are reported
    scratch = train(  # the same vocabulary, so both losses are over the same characters
        lm_config(**_quiet(**multi30k, **{"data.tokenizer_from": str(source)})),
        tmp_path / "scratch",
        devices=jax.devices()[:1],
    )
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (
        source / "tokenizer.json"
    ).read_text()
    assert tuned["eval/loss"] < scratch["eval/loss"] - 0.2


def test_unknown_characters_are_dropped_or_replaced():
    assert restrict_to_alphabet("a1b22c", "abc ", "drop") == ("abc", {"1": 1, "2": 2})
    assert restrict_to_alphabet("a1b", "abc ", "replace", " ")[0] == "a b"
    assert restrict_to_alphabet("a1b", "abc ", "error")[0] == "a1b"  # the tokenizer refuses it
    with pytest.raises(UserError, match="unknown_replacement='#' must be one character"):
        restrict_to_alphabet("a1b", "abc ", "replace", "#")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.arch": "gru"}, r"model.arch='gru' is unknown; allowed: transformer, ssm, lstm"),
        ({"freeze": "block_(0"}, r"freeze='block_\(0' is not a valid regular expression"),
        ({"freeze": "^nothing$"}, r"freeze='\^nothing\$' matches no parameter"),
        ({"init_from": "EMPTY"}, r"init_from='.*': .* holds no checkpoints/"),
    ],
    ids=["arch", "regex", "no-match", "no-checkpoints"],
)
def test_bad_input_is_a_one_line_user_error(tmp_path, overrides, message):
    if overrides.get("init_from") == "EMPTY":
        (tmp_path / "empty").mkdir()
        overrides = {"init_from": str(tmp_path / "empty")}
    with pytest.raises(UserError, match=message) as caught:
        train(lm_config(**_quiet(**overrides)), tmp_path / "run", devices=jax.devices()[:1])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"init_from": "SOURCE:999"}, r"init_from='.*:999': no checkpoint at step 999; available"),
        ({"data.tokenizer_from": "/no/such"}, r"data\.tokenizer_from='/no/such': /no/such is no"),
        (
            {"init_from": "SOURCE", "data.tokenizer": "bpe"},
            r"data\.tokenizer='bpe' but init_from='.*' has a char tokenizer of 65 entries",
        ),
    ],
    ids=["no-such-step", "no-tokenizer-folder", "other-tokenizer-kind"],
)
def test_bad_sources_are_one_line_user_errors(source, tmp_path, overrides, message):
    overrides = {k: v.replace("SOURCE", str(source)) for k, v in overrides.items()}
    with pytest.raises(UserError, match=message) as caught:
        train(lm_config(**_quiet(**overrides)), tmp_path / "run", devices=jax.devices()[:1])
    assert "\n" not in str(caught.value)


def test_cli_reports_a_bad_regex_in_one_line_with_exit_code_2(tmp_path):
    result = genlab(*train_args(tmp_path, "--config.freeze=("))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a valid regular expression" in (
        result.stderr
    )
