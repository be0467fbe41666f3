"""Subword tokenizers (HF `tokenizers`): exact round trips, special tokens, save/load, the same
file from every fit, one tokenizer for all processes, and the LM on BPE (trained on the training
text only, bits per character)."""

from __future__ import annotations

import json
import math

import jax
import pytest
import tokenizers as hf
from conftest import SHAKESPEARE, lm_config

from train.data import run_tokenizer
from train.data.tokenizers import (
    CharTokenizer,
    SubwordTokenizer,
    fit_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from train.errors import UserError

CORPUS = [
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "Zwei junge Männer spielen Fußball auf einer grünen Wiese.",
    "A man in an orange hat starring at something.",
    "Two young men are playing soccer on a green field.",
] * 20
# Unseen characters, tabs, U+00A0, runs of spaces, newlines and an emoji: all bytes in the end.
AWKWARD = "Größe  über\tden\u00a0Fluss — naïve 🐕\n  zwei\n"


def test_subword_round_trip_specials_and_save_load(tmp_path):
    kind = "bpe"
    tokenizer = fit_tokenizer(kind, CORPUS, 300)
    assert isinstance(tokenizer, SubwordTokenizer) and tokenizer.kind == kind
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size <= 300
    for text in [*CORPUS[:4], AWKWARD]:
        ids = tokenizer.encode(text)
        assert ids.dtype.name == "int32" and tokenizer.unk_id not in ids
        assert tokenizer.decode(ids) == text
    # Special tokens are left out of decoded text (padding, BOS, EOS around the sentence).
    ids = tokenizer.encode(CORPUS[0]).tolist()
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, 0, 0]) == CORPUS[0]

    save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == kind and loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode(AWKWARD).tolist() == tokenizer.encode(AWKWARD).tolist()
    # The file is a plain HF tokenizer.json.
    plain = hf.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert plain.encode(AWKWARD).ids == tokenizer.encode(AWKWARD).tolist()


def test_two_fits_on_the_same_text_give_the_same_file():
    text = SHAKESPEARE.read_text()[:200_000]
    first, second = (fit_tokenizer("bpe", text, 600).to_json() for _ in range(2))
    assert json.dumps(first) == json.dumps(second)


def test_only_process_0_fits_and_every_process_loads_its_file(tmp_path, monkeypatch):
    """Two processes, simulated one after the other: process 0 fits and saves into the workdir
    between the two barriers, process 1 never fits and loads that file."""
    config = lm_config(**{"data.tokenizer": "bpe", "data.vocab_size": "300"})
    fitted = fit_tokenizer("bpe", CORPUS, 300)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for index in (0, 1):
        workdir, barriers, fits = tmp_path / f"process_{index}", [], []
        workdir.mkdir()

        def barrier(name, index=index, workdir=workdir, barriers=barriers):
            barriers.append(name)
            if index == 1 and len(barriers) == 2:  # process 0 has saved by now
                save_tokenizer(fitted, workdir)

        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        monkeypatch.setattr(run_tokenizer.multihost_utils, "sync_global_devices", barrier)
        tokenizer = run_tokenizer.run_tokenizer(
            config, workdir, lambda f=fits: f.append(1) or fitted
        )
        assert len(barriers) == 2 and len(fits) == (index == 0)
        assert tokenizer.to_json() == load_tokenizer(workdir).to_json() == fitted.to_json()


def test_bpe_learns_merges_that_shorten_text():
    tokenizer = fit_tokenizer("bpe", CORPUS, 400)
    assert len(tokenizer.encode(CORPUS[1])) < len(CORPUS[1].encode()) / 2


def test_char_tokenizer_file_format_is_unchanged(tmp_path):
    tokenizer = fit_tokenizer("char", "hello world")
    save_tokenizer(tokenizer, tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {
        "kind": "char",
        "chars": " dehlorw",
    }
    assert isinstance(load_tokenizer(tmp_path), CharTokenizer)


def test_bad_tokenizer_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"data.tokenizer='wordpiece' is unknown; allowed: char"):
        fit_tokenizer("wordpiece", CORPUS)
    with pytest.raises(UserError, match=r"data.vocab_size=100 is too small .* at least 261"):
        fit_tokenizer("bpe", CORPUS, 100)
    (tmp_path / "tokenizer.json").write_text('{"kind": "morse"}')
    with pytest.raises(UserError, match="unknown tokenizer kind 'morse'"):
        load_tokenizer(tmp_path)


def test_language_model_trains_with_bpe_fitted_on_the_training_text_only(tmp_path):
    from train.tasks import build_task
    from train.trainer import train

    text = SHAKESPEARE.read_text()[:100_000]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    overrides = {"data.tokenizer": "bpe", "data.vocab_size": "320", "mesh.data": "1"}
    schedule = {"train.steps": "30", "optim.lr": "1e-2", "optim.decay_steps": "30"}
    config = lm_config(**overrides, **schedule, **{"data.path": str(corpus)})
    config.train.update(eval_every=30, log_every=10)
    task = build_task(config)
    train_text, val_text = text[:90_000], text[90_000:]  # data.val_fraction=0.1
    assert task.tokenizer.to_json() == fit_tokenizer("bpe", train_text, 320).to_json()
    assert task.tokenizer.to_json() != fit_tokenizer("bpe", text, 320).to_json()
    assert task.data.tokens_per_char == len(task.tokenizer.encode(val_text)) / len(val_text) < 0.8

    metrics = train(config, tmp_path / "run", devices=jax.devices()[:1])
    tokenizer = load_tokenizer(tmp_path / "run")
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 320
    # The config stays as configured; the size the data gave is recorded beside it.
    assert config.model.vocab_size == 0
    derived = json.loads((tmp_path / "run" / "metadata.json").read_text())["derived"]
    assert derived == {"model.vocab_size": 320}
    assert tokenizer.decode(tokenizer.encode(text[:2000])) == text[:2000]
    assert metrics["eval/loss"] < math.log(320) - 1.0  # learnt something
    # Bits per character, not per token: comparable with a char-level model's.
    bits_per_token = metrics["eval/loss"] / math.log(2)
    assert metrics["eval/bpc"] == pytest.approx(bits_per_token * task.data.tokens_per_char)
    assert metrics["eval/bpc"] < bits_per_token
