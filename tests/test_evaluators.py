"""Evaluators chosen by `config.evals`, and capabilities declared rather than guessed."""

from __future__ import annotations

import json
import re

import ml_collections
import pytest
from conftest import genlab, lm_config

from train import evaluators
from train.capabilities import ImageSampler, SampleWriter, TextSampler, Translator, has, require
from train.data.splits import NONE
from train.errors import UserError
from train.tasks import build_task, get_task_class

SYNTHETIC = {"data.source": "synthetic", "data.vocab_size": "64"}  # needs no file or tokenizer


def test_every_family_declares_what_it_can_do():
    declared = {
        name: {c for c in (TextSampler, ImageSampler, Translator, SampleWriter) if has_cls(name, c)}
        for name in ("lm", "seq2seq", "vae", "gan", "diffusion")
    }
    assert declared["lm"] == {TextSampler, SampleWriter}
    assert declared["seq2seq"] == {TextSampler, Translator, SampleWriter}
    for image_family in ("vae", "gan", "diffusion"):
        assert declared[image_family] == {ImageSampler, SampleWriter}
        assert not hasattr(get_task_class(image_family), "generate")  # no name to be mistaken


def has_cls(name: str, capability: type) -> bool:
    return capability in get_task_class(name).__mro__


def test_a_missing_capability_is_one_line_naming_what_the_family_offers():
    task = build_task(lm_config(**SYNTHETIC), splits=NONE)
    assert require(task, TextSampler, "sample") is task and not has(task, Translator)
    with pytest.raises(UserError) as error:
        require(task, Translator, "evals.bleu")
    assert str(error.value) == (
        "evals.bleu: task 'lm' is not a translator; it is a text sampler, a sample writer"
    )
    with pytest.raises(UserError, match=r"evals\.fid: task 'lm' is not an image sampler"):
        evaluators.build(lm_config(), task, ["fid"])


def test_evals_come_from_the_config_with_their_cadence():
    config = lm_config(**SYNTHETIC)
    assert evaluators.configured(config) == {"heldout": {"every": 0}, "samples": {"every": 0}}
    task = build_task(config, splits=NONE)
    heldout, samples = evaluators.build(config, task)
    assert (heldout.name, samples.name) == ("heldout", "samples")
    # every 0: at each train.eval_every and at the end; N: every N steps; -1: on request only
    assert [heldout.due(s, 20, final=False) for s in (10, 20, 40)] == [False, True, True]
    assert heldout.due(7, 20, final=True)
    sparse = evaluators.build(config, task, ["heldout"], {"every": 3})[0]
    assert [sparse.due(s, 20, final=False) for s in (3, 4, 20)] == [True, False, False]
    manual = evaluators.build(config, task, ["heldout"], {"every": -1})[0]
    assert not manual.due(20, 20, final=True)


@pytest.mark.parametrize(
    ("evals", "message"),
    [
        ({"nope": {}}, "evaluator 'nope' is unknown; allowed: bleu, fid, heldout, samples"),
        ({"heldout": {"every": 0, "batches": 3}}, "evals.heldout.batches is unknown"),
        ({"heldout": {"every": -2}}, "evals.heldout.every=-2: allowed -1 (never), 0, or > 0"),
    ],
)
def test_bad_evals_are_one_line_errors(evals, message):
    config = lm_config(**SYNTHETIC)
    with config.unlocked():
        config.evals = ml_collections.ConfigDict(evals)
    task = build_task(config, splits=NONE)
    with pytest.raises(UserError, match=re.escape(message)):
        evaluators.build(config, task)


def test_a_run_saved_before_evals_existed_gets_the_evaluators_its_keys_asked_for():
    legacy = ml_collections.ConfigDict(
        {"eval": {"fid_samples": 4096, "fid_weights": "w", "bleu_examples": 0}}
    )
    assert evaluators.configured(legacy) == {
        "heldout": {},
        "samples": {},
        "fid": {"num_samples": 4096, "weights": "w"},
    }


def test_genlab_eval_runs_one_named_evaluator_or_the_configured_ones(trained_lm):
    default = genlab("eval", "--workdir", str(trained_lm), check=True)
    named = genlab("eval", "--workdir", str(trained_lm), "--metric", "heldout", check=True)
    default_record, named_record = json.loads(default.stdout), json.loads(named.stdout)
    assert default_record == named_record  # an LM's configured evaluators: heldout (+ samples)
    assert {"step", "eval/loss", "eval/ppl", "eval/bpc"} <= named_record.keys()
    refused = genlab("eval", "--workdir", str(trained_lm), "--metric", "bleu")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "evals.bleu: task 'lm' is not a translator" in refused.stderr
