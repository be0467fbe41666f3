"""Encoder-decoder translation: masks, packing, KV-cached greedy and beam search, the loss, BLEU,
the Multi30k pipeline, learning, exact resume, tokenizer reuse, the CLI, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    MULTI30K,
    REPO,
    SEQ2SEQ_CONFIG,
    assert_checkpoints_equal,
    genlab,
    seq2seq_config,
)

from launch.compare import RunRecord, build_table
from launch.config import apply_overrides, read_config
from models.transformer import EncoderDecoder
from train.data import translation
from train.data.tokenizers import load_tokenizer
from train.errors import UserError
from train.logging import read_metrics
from train.metrics.bleu import corpus_bleu
from train.optim import inverse_sqrt_schedule
from train.tasks import build_task
from train.tasks.seq2seq.search import beam_search, greedy_search, length_penalty
from train.tasks.seq2seq.task import (
    decode_sources,
    smoothed_cross_entropy,
    start_decoding,
)
from train.trainer import evaluate_run, train

PAD, BOS, EOS = 0, 1, 2
SPECIALS = translation.Specials(PAD, BOS, EOS)


def _model(**fields) -> EncoderDecoder:
    return EncoderDecoder(
        **{
            "vocab_size": 23,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 2,
            "emb_dim": 16,
            "mlp_dim": 32,
            "max_len": 12,
            **fields,
        }
    )


def _init(model: EncoderDecoder, source, target):
    return nn.meta.unbox(model.init(jax.random.key(1), source, target)["params"])


SOURCE = jnp.asarray([[5, 6, 7, 8, EOS, PAD, PAD, PAD], [9, 10, EOS, PAD, PAD, PAD, PAD, PAD]])
TARGET = jnp.asarray([[BOS, 11, 12, 13, 14, 15, 16], [BOS, 17, 18, 19, 20, 21, 22]])
VARIANTS = [
    {},  # pre-LN, shared and tied embeddings, sinusoidal positions
    {
        "pre_norm": False,
        "share_embeddings": False,
        "tie_output": False,
        "pos_encoding": "learned",
        "use_bias": True,
    },
]


@pytest.mark.parametrize("fields", VARIANTS, ids=["pre_ln_tied", "post_ln_separate"])
def test_padding_and_future_targets_change_nothing_they_must_not(fields):
    model = _model(**fields)
    params = _init(model, SOURCE, TARGET)
    segments = (SOURCE != PAD).astype(jnp.int32)
    apply = jax.jit(
        lambda source, target: model.apply({"params": params}, source, target, segments)
    )
    logits = apply(SOURCE, TARGET)
    # Other tokens at the padded source positions (same mask): encoder self-attention and
    # cross-attention never look there.
    np.testing.assert_array_equal(apply(jnp.where(segments > 0, SOURCE, 3), TARGET), logits)
    # A real source token does matter.
    assert not np.allclose(apply(SOURCE.at[:, 0].set(4), TARGET), logits)
    # Later target tokens never change earlier predictions (causal decoder self-attention).
    future = apply(SOURCE, TARGET.at[:, 4:].set(3))
    np.testing.assert_array_equal(future[:, :4], logits[:, :4])
    assert not np.allclose(future[:, 4:], logits[:, 4:])


def test_packed_row_gives_each_pair_its_own_logits():
    model = _model()
    source = [np.asarray([5, 6, 7]), np.asarray([8, 9])]
    target = [np.asarray([10, 11]), np.asarray([12, 13, 14])]
    pairs = translation.TokenPairs(translation.Ragged(source), translation.Ragged(target))
    packed = translation.build_rows(pairs, [[0, 1]], 12, SPECIALS)
    alone = translation.build_rows(pairs, [[0], [1]], 12, SPECIALS)
    fields = ("source", "target_in", "source_segments", "target_segments")
    positions = ("source_positions", "target_positions")
    params = _init(model, jnp.asarray(packed["source"]), jnp.asarray(packed["target_in"]))

    @jax.jit
    def logits(rows):
        return model.apply({"params": params}, *(rows[f] for f in fields + positions))

    both, each = logits(packed), logits(alone)
    np.testing.assert_allclose(both[0, :3], each[0, :3], atol=1e-5)  # BOS + 2 tokens
    np.testing.assert_allclose(both[0, 3:7], each[1, :4], atol=1e-5)  # BOS + 3 tokens
    assert packed["target_out"][0, :7].tolist() == [10, 11, EOS, 12, 13, 14, EOS]
    assert packed["target_positions"][0, :8].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


@pytest.mark.parametrize("fields", VARIANTS, ids=["pre_ln_tied", "post_ln_separate"])
def test_kv_cached_decoding_matches_the_full_forward(fields):
    model = _model(**fields)
    params = _init(model, SOURCE, TARGET)
    segments = (SOURCE != PAD).astype(jnp.int32)
    full = model.apply({"params": params}, SOURCE, TARGET)
    encoded = model.apply({"params": params}, SOURCE, method=model.encode)
    cache = model.init(
        jax.random.key(0), TARGET[:, :1], encoded, segments, decode=True, method=model.decode
    )["cache"]
    cache = jax.tree.map(jnp.zeros_like, cache)
    pieces = []
    for t in range(TARGET.shape[1]):  # the cross-attention keys/values only on the first call
        logits, mutated = model.apply(
            {"params": params, "cache": cache},
            TARGET[:, t : t + 1],
            encoded if t == 0 else None,
            segments,
            decode=True,
            mutable=["cache"],
            method=model.decode,
        )
        cache = mutated["cache"]
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("fields", VARIANTS, ids=["pre_ln_tied", "post_ln_separate"])
def test_bfloat16_compute_keeps_close_logits(fields):
    model = _model(**fields)
    params = _init(model, SOURCE, TARGET)
    full = model.apply({"params": params}, SOURCE, TARGET)
    half = model.clone(dtype=jnp.bfloat16).apply({"params": params}, SOURCE, TARGET)
    assert half.dtype == jnp.float32  # logits come back in float32 for the loss
    np.testing.assert_allclose(half, full, atol=0.05 * float(jnp.abs(full).max()))
    assert not np.array_equal(half, full)  # bfloat16 really was used


def test_smoothed_cross_entropy_is_optax_with_smoothed_labels():
    # Kept hand-written: it never builds the (..., vocab) target that optax's form needs (for
    # WMT14's 37k vocabulary, XLA keeps about three logits-sized temporaries for that one).
    logits = 3.0 * jax.random.normal(jax.random.key(0), (3, 5, 11))
    labels = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
    smoothed, nll = smoothed_cross_entropy(logits, labels, 0.1)
    target = optax.smooth_labels(jax.nn.one_hot(labels, 11), 0.1)
    np.testing.assert_allclose(smoothed, optax.softmax_cross_entropy(logits, target), rtol=1e-5)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(nll, expected, rtol=1e-5)


def _uncached_greedy(model, params, source, steps):
    """Greedy decoding by re-running the whole decoder on the prefix at every step (the
    prefix buffer is fixed-size; causality keeps what follows the prefix out)."""
    rows = source.shape[0]
    prefix = np.full((rows, steps + 1), PAD, np.int32)
    prefix[:, 0] = BOS
    forward = jax.jit(lambda target: model.apply({"params": params}, source, target))
    done = np.zeros(rows, bool)
    for t in range(steps):
        logits = np.array(forward(jnp.asarray(prefix))[:, t])
        logits[:, [PAD, BOS]] = -np.inf
        token = np.where(done, PAD, logits.argmax(-1))
        done |= token == EOS
        prefix[:, t + 1] = token
    return prefix[:, 1:]


def test_greedy_with_caches_equals_uncached_and_beam_one_equals_greedy():
    model = _model(max_len=10)
    params = _init(model, SOURCE, TARGET)
    steps = model.max_len - 1
    cached = np.asarray(decode_sources(model, params, SOURCE, 1, 0.0, steps, SPECIALS))
    np.testing.assert_array_equal(cached, _uncached_greedy(model, params, SOURCE, steps))

    @jax.jit
    def beam_one(params, source):
        step, cache, first = start_decoding(model, params, source, 1, SPECIALS)
        return beam_search(step, cache, first, 1, steps, EOS, PAD, alpha=0.0)[0]

    np.testing.assert_array_equal(beam_one(params, SOURCE), cached)
    # beam_search itself with one beam and no length penalty is greedy search too.
    logits = jax.random.normal(jax.random.key(3), (6, 9, 7)).at[:, :, EOS].add(-1.0)

    def markov(cache, tokens):  # next-token logits depend on the step and the last token
        index = cache["index"]
        return logits[index % 9, tokens % 6], {"index": index + 1}

    start = logits[0, jnp.arange(4)]
    greedy = greedy_search(markov, {"index": jnp.int32(1)}, start, 9, EOS, PAD)
    beamed, _ = beam_search(markov, {"index": jnp.int32(1)}, start, 1, 9, EOS, PAD, alpha=0.0)
    np.testing.assert_array_equal(beamed, greedy)


def test_beam_search_finds_the_most_likely_sequence_greedy_misses():
    # Step 0: "a" (p=0.6) or "b" (p=0.4); after "a" every next token is unlikely, after "b" EOS
    # is certain: greedy picks a..., beam 2 finds "b EOS" (0.4 > 0.6 * 0.5).
    a, b, vocab = 3, 4, 5
    probs = np.full((vocab, vocab), 1e-6)
    probs[a, [EOS, a]] = 0.5, 0.5
    probs[b, EOS] = 1.0
    probs[EOS, EOS] = 1.0
    table = jnp.log(jnp.asarray(probs / probs.sum(1, keepdims=True), jnp.float32))
    first = jnp.log(jnp.asarray([[1e-6, 1e-6, 1e-6, 0.6, 0.4]] * 2, jnp.float32))

    def step(cache, tokens):
        return table[tokens], cache

    tokens, scores = beam_search(step, {}, first, 2, 4, EOS, PAD, alpha=0.6)
    assert tokens[0, :2].tolist() == [b, EOS]
    np.testing.assert_allclose(scores[0], math.log(0.4) / length_penalty(2.0, 0.6), rtol=1e-4)
    greedy = greedy_search(step, {}, first[:1], 4, EOS, PAD)
    assert greedy[0, 0] == a


@pytest.mark.parametrize(
    ("eos_like", "expected"),
    [(17, [19, 22, 4, EOS]), (22, [11] * 9)],
    ids=["finishes_after_3_tokens", "never_finishes"],
)
def test_beam_search_scores_are_model_log_probs_over_the_length_penalty(eos_like, expected):
    """Beam 3 over a batch of 2 with the real KV caches: each returned sequence, rescored by a
    teacher-forced forward pass, has exactly the score the search reports."""
    model = _model(max_len=10, **VARIANTS[1])  # untied output projection
    params = _init(model, SOURCE, TARGET)
    # Sharper, context-dependent predictions, and EOS as likely as token `eos_like`: the
    # search then picks, reorders and finishes beams (the second case beats greedy's
    # "19 EOS", so the beams really differ).
    kernel = 10.0 * params["head"]["kernel"]
    params = {**params, "head": {"kernel": kernel.at[:, EOS].set(kernel[:, eos_like])}}
    k, steps, alpha = 3, model.max_len - 1, 0.6

    @jax.jit
    def search(params, source):
        step, cache, first = start_decoding(model, params, source, k, SPECIALS)
        return beam_search(step, cache, first, k, steps, EOS, PAD, alpha)

    tokens, scores = (np.asarray(x) for x in search(params, SOURCE))
    # Teacher forcing on BOS + the sequence; what follows EOS (padding) changes nothing before.
    target_in = jnp.concatenate([jnp.full((2, 1), BOS), jnp.asarray(tokens[:, :-1])], axis=1)
    logits = jax.jit(model.apply)({"params": params}, SOURCE, target_in)
    logits = logits.at[:, :, jnp.asarray([PAD, BOS])].set(-jnp.inf)  # never output
    log_probs = np.take_along_axis(jax.nn.log_softmax(logits), tokens[:, :, None], -1)[..., 0]
    for row, sequence in enumerate(tokens):
        assert sequence[: len(expected)].tolist() == expected
        ends = np.flatnonzero(sequence == EOS)
        length = int(ends[0]) + 1 if len(ends) else steps
        expected_score = log_probs[row, :length].sum() / float(length_penalty(length, alpha))
        np.testing.assert_allclose(scores[row], expected_score, rtol=1e-4)


def test_searches_run_no_model_step_after_the_last_token():
    """`max_steps` tokens take `max_steps - 1` steps: the start token's logits give the first."""
    fed = []

    def step(cache, tokens):
        jax.debug.callback(lambda i: fed.append(int(i)), cache["position"])
        return logits, {"position": cache["position"] + 1}

    logits = jnp.zeros((4, 6)).at[:, 3].set(1.0).at[:, EOS].set(-jnp.inf)  # never ends
    greedy = greedy_search(step, {"position": jnp.int32(1)}, logits, 5, EOS, PAD)
    assert greedy.tolist() == [[3] * 5] * 4 and sorted(fed) == [1, 2, 3, 4]
    fed.clear()
    beam_search(step, {"position": jnp.int32(1)}, logits, 2, 5, EOS, PAD)
    assert sorted(fed) == [1, 2, 3, 4]


def test_bleu_of_references_against_themselves_is_100_and_signature_is_kept():
    references = ["Ein Hund rennt über die Wiese.", "Zwei Männer spielen Fußball."]
    score = corpus_bleu(references, references)
    assert score.bleu == pytest.approx(100.0)
    assert "tok:13a" in score.signature and "version:2." in score.signature
    worse = corpus_bleu(["Ein Hund läuft.", "Zwei Frauen spielen."], references)
    assert 0.0 <= worse.bleu < 50.0
    with pytest.raises(UserError, match=r"eval\.bleu_tokenize='moses' is unknown"):
        corpus_bleu(references, references, tokenize="moses")


def test_multi30k_cleaning():
    assert translation.clean("  Ein\tMann\u00a0mit  Hut &amp; Stock ") == "Ein Mann mit Hut & Stock"
    raw_de = translation.read_lines(MULTI30K / "train.de.gz")
    assert len(raw_de) == 29_000 and raw_de[16_509] == raw_de[16_663] == "@@"
    pairs = translation.load_pairs("multi30k", str(MULTI30K), "train", "en", "de")
    assert len(pairs) == 28_998  # the two @@ pairs dropped
    text = "\n".join(pairs["source"]) + "\n".join(pairs["target"])
    assert "@@" not in pairs["target"] and "&amp;" not in text
    assert "\t" not in text and "\u00a0" not in text and "  " not in text
    assert all(s == s.strip() for s in pairs["target"])
    assert sum("&" in s for s in pairs["source"]) == 16
    test = translation.load_pairs("multi30k", str(MULTI30K), "test_2016_flickr", "en", "de")
    assert len(test) == 1000
    assert test["reference"] == translation.read_lines(MULTI30K / "test_2016_flickr.de.gz")


def test_hub_datasets_are_read_by_name_and_split(monkeypatch):
    """Offline, the hub is replaced by rows shaped as `wmt/wmt14` and `bentrevett/multi30k`."""
    import datasets

    calls = []
    rows = {
        "wmt/wmt14": {"translation": [{"de": "Ein  Hund.", "en": "A dog."}, {"de": "x", "en": ""}]},
        "bentrevett/multi30k": {"en": ["A cat &amp; a dog."], "de": ["Eine Katze und ein Hund."]},
    }

    def load_dataset(name, *args, split):
        calls.append((name, *args, split))
        return datasets.Dataset.from_dict(rows[name])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    wmt = translation.load_pairs("wmt14", "", "test", "en", "de")
    assert wmt[:] == {"source": ["A dog."], "target": ["Ein Hund."], "reference": ["Ein  Hund."]}
    multi30k = translation.load_pairs("multi30k", "", "test_2016_flickr", "en", "de")
    assert multi30k["source"] == ["A cat & a dog."]
    assert calls == [("wmt/wmt14", "de-en", "test"), ("bentrevett/multi30k", "test")]


def test_training_batches_are_pure_functions_of_seed_and_step():
    rng = np.random.default_rng(0)
    # Pair i's source starts with token 1000 + i, so every packed pair can be identified.
    sources = [np.asarray([1000 + i, *rng.integers(4, 50, rng.integers(0, 8))]) for i in range(300)]
    targets = [rng.integers(4, 50, size=rng.integers(1, 9)) for _ in range(300)]
    pairs = translation.TokenPairs(translation.Ragged(sources), translation.Ragged(targets))
    per_step = translation.pairs_per_step(pairs, 4, 24)
    stream = translation.PackedStream(pairs, 4, 24, per_step, SPECIALS)
    batch = stream.batch(7, 5)
    again = translation.PackedStream(pairs, 4, 24, per_step, SPECIALS).batch(7, 5)
    for name in translation.FIELDS:
        np.testing.assert_array_equal(batch[name], again[name])
        halves = [stream.batch(7, 5, process_index=i, process_count=2)[name] for i in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves), batch[name])
    assert not np.array_equal(stream.batch(7, 6)["source"], batch["source"])
    # Over one epoch's steps nearly every pair is seen, none twice.
    seen = np.concatenate(
        [stream.batch(7, step)["source"].ravel() for step in range(300 // per_step)]
    )
    seen = seen[seen >= 1000]
    assert len(np.unique(seen)) == len(seen) >= 0.98 * (300 // per_step) * per_step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The `test` variant trained briefly on a slice of Multi30k (one device)."""
    workdir = tmp_path_factory.mktemp("seq2seq")
    config = seq2seq_config(**{"train.steps": "60", "train.eval_every": "60"})
    metrics = train(config, workdir, devices=jax.devices()[:1])
    return workdir, metrics


def test_loss_falls_and_bleu_is_recorded_with_its_signature(trained):
    workdir, metrics = trained
    losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
    assert losses[0] > 5.5 and losses[-1] < losses[0] - 0.7
    assert metrics["eval/ppl"] == pytest.approx(math.exp(metrics["eval/loss"]))
    assert 0.0 <= metrics["eval/bleu"] <= 100.0
    record = json.loads((workdir / "bleu" / "step_0000060_val.json").read_text())
    assert record["signature"].startswith("nrefs:1|case:mixed") and record["sentences"] == 8
    assert record["decode"] == {
        "search": "beam",
        "beam_size": 2,
        "length_penalty": "GNMT ((5 + |Y|) / 6)^alpha",
        "alpha": 0.6,
        "max_output_tokens": 31,
    }
    assert len((workdir / "bleu" / "step_0000060_val.txt").read_text().splitlines()) == 8
    assert "=> " in (workdir / "samples" / "step_0000060.txt").read_text()


def test_eval_reports_bleu_and_sample_translates(trained):
    workdir, _ = trained
    config = read_config(workdir / "config.json")
    apply_overrides(
        config,
        {
            "data.eval_split": "test_2016_flickr",
            "evals.bleu.examples": "4",
            "eval.beam_size": "1",
            "mesh.data": "-1",  # trained on one device; evaluated data-parallel on all
        },
    )
    step, metrics = evaluate_run(config, workdir)
    assert step == 60 and {"eval/loss", "eval/ppl", "eval/bleu"} <= metrics.keys()
    assert (workdir / "bleu" / "step_0000060_test_2016_flickr.json").is_file()
    result = genlab("sample", "--workdir", str(workdir), "--prompt", "A dog runs.", check=True)
    lines = result.stdout.rstrip("\n").split("\n")
    assert lines[0] == "A dog runs." and len(lines) == 2


def test_init_from_reuses_the_source_tokenizer(trained, tmp_path):
    source, _ = trained
    # A refit on these 50 pairs would give another vocabulary.
    small = {"data.train_examples": "50", "data.eval_examples": "4", "init_from": str(source)}
    task = build_task(seq2seq_config(**small), tmp_path)
    assert task.tokenizer.to_json() == load_tokenizer(source).to_json()
    with pytest.raises(UserError, match=r"data\.vocab_size=300 but init_from=.* 400 entries"):
        build_task(seq2seq_config(**small, **{"data.vocab_size": "300"}), tmp_path)


def test_resume_is_exact(tmp_path):
    steps = {"train.checkpoint_every": "5", "train.eval_every": "100", "evals.bleu.examples": "0"}
    steps["model.dropout"] = "0.1"  # each step's dropout key must be the same after resuming
    one = jax.devices()[:1]
    train(seq2seq_config(**steps, **{"train.steps": "10"}), tmp_path / "straight", one)
    train(seq2seq_config(**steps, **{"train.steps": "5"}), tmp_path / "resumed", one)
    train(seq2seq_config(**steps, **{"train.steps": "10"}), tmp_path / "resumed", one)
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 10)


def test_inverse_sqrt_schedule_peaks_after_warmup():
    schedule = inverse_sqrt_schedule(7e-4, 4000)
    assert float(schedule(3999)) == pytest.approx(7e-4)
    assert float(schedule(1999)) == pytest.approx(3.5e-4)
    assert float(schedule(15999)) == pytest.approx(3.5e-4)
    # Vaswani et al.: d^-0.5 * min(s^-0.5, s * w^-1.5) for d = 512.
    s = 10_000
    assert float(inverse_sqrt_schedule(512**-0.5 * 4000**-0.5, 4000)(s - 1)) == pytest.approx(
        512**-0.5 * min(s**-0.5, s * 4000**-1.5)
    )


def test_bad_input_is_one_line_with_exit_code_2(tmp_path):
    result = genlab(
        "train",
        "--config",
        f"{SEQ2SEQ_CONFIG}:test",
        "--workdir",
        str(tmp_path),
        f"--config.data.path={MULTI30K}",
        "--config.eval.beam_size=0",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "eval.beam_size=0: must be at least 1" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.path": "/no/such/folder"}, r"data\.path='/no/such/folder': no such folder"),
        ({"data.tokenizer": "char"}, r"data\.tokenizer='char' has no pad/bos/eos tokens"),
        ({"data.eval_split": "test_2099"}, r"data\.eval_split='test_2099': .* holds no test_2099"),
        ({"model.emb_dim": "33"}, r"model\.emb_dim=33 must be divisible"),
        ({"model.pos_encoding": "rope"}, r"model\.pos_encoding='rope' is unknown"),
        ({"data.tokenizer_from": "/no/such"}, r"data\.tokenizer_from='/no/such': /no/such is no"),
    ],
    ids=["path", "char", "split", "width", "positions", "tokenizer_from"],
)
def test_bad_settings_are_one_line_user_errors(overrides, message):
    small = {"data.train_examples": "50", "data.eval_examples": "4"}
    with pytest.raises(UserError, match=message) as caught:
        build_task(seq2seq_config(**small, **overrides))
    assert "\n" not in str(caught.value)


def test_bad_dataset_names_are_user_errors():
    with pytest.raises(UserError, match=r"data\.name='europarl' is unknown"):
        translation.load_pairs("europarl", "", "train", "en", "de")
    with pytest.raises(
        UserError, match=r"data\.eval_split='test_2017_flickr' is not a split of multi30k on"
    ):
        translation.hub_pairs("multi30k", "test_2017_flickr", "en", "de", "data.eval_split")


def test_compare_shows_the_wmt14_reference_for_runs_evaluated_on_its_split():
    def rows(split: str) -> list[dict]:
        config = {"data": {"name": "wmt14", "eval_split": split}}
        run = RunRecord(split, Path(split), config, [{"step": 1, "eval/bleu": 20.0}])
        return [r for r in build_table([run], ["eval/bleu"]) if r["run"].startswith("reference")]

    assert [r["eval/bleu final"] for r in rows("test")] == [27.3]  # newstest2014
    assert rows("val") == []  # newstest2013: the paper's number is not about it


def test_wmt14_config_is_transformer_base():
    from launch.config import load_config
    from train.tasks.seq2seq.task import build_model

    config = load_config(f"{REPO}/experiments/translate_wmt14.py:base")
    assert config.data.eval_split == "test"  # newstest2014, as the paper's table
    m, o = config.model, config.optim
    assert (m.num_encoder_layers, m.num_decoder_layers, m.emb_dim, m.num_heads) == (6, 6, 512, 8)
    assert (m.mlp_dim, m.dropout, config.loss.label_smoothing) == (2048, 0.1, 0.1)
    assert not m.pre_norm and m.share_embeddings and m.tie_output
    assert (o.schedule, o.warmup_steps, o.b1, o.b2, o.eps) == (
        "inverse_sqrt",
        4000,
        0.9,
        0.98,
        1e-9,
    )
    assert o.lr == pytest.approx(512**-0.5 * 4000**-0.5)
    model = build_model(m, config.data.max_len, 0, 37_000)
    tokens = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens)["params"])
    count = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)))
    assert 60e6 < count < 66e6  # the paper's 65M (its vocabulary differs slightly)
