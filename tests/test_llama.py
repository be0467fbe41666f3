"""The Llama-style options of the Transformer LM (experiments/llama.py): published parameter
counts, grouped-query attention (KV cache, implementations, equivalence with multi-head
attention), RMSNorm and SwiGLU, training and sampling the `test` variant, one-line errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SHAKESPEARE, genlab, run_in_pieces, tiny_decoder_lm
from flax.traverse_util import flatten_dict

from launch.cli import main
from launch.config import apply_overrides, load_config
from models.layers import MLP, MultiHeadAttention, RMSNorm
from models.transformer import DecoderLM, segment_mask
from train.data.splits import NONE
from train.errors import UserError
from train.logging import read_metrics
from train.tasks import build_task
from train.trainer import train

LLAMA_CONFIG = REPO / "experiments" / "llama.py"
PROMPT_THEN_ONE_BY_ONE = list(range(6, 16))  # decode a 16-token row as 6 tokens, then 1 by 1
# The Hugging Face models' counts (the embedding table once; Llama-3.2-1B ties its output to it).
PUBLISHED_COUNTS = {"1b": 1_235_814_400, "8b": 8_030_261_248}


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """float32 products in float32 on a GPU too (TF32 there would exceed these tolerances)."""
    with jax.default_matmul_precision("highest"):
        yield


def _llama_config(variant: str, **overrides: str):
    config = load_config(f"{LLAMA_CONFIG}:{variant}")
    if variant == "test":
        overrides = {"data.path": str(SHAKESPEARE), "mesh.data": "1", **overrides}
    apply_overrides(config, overrides)
    return config


def _tiny_llama(**overrides) -> DecoderLM:
    """The conftest decoder (16 wide) with Llama's options: 4 query heads over 2 key/value heads."""
    llama = dict(
        num_heads=4,
        num_kv_heads=2,
        norm="rmsnorm",
        mlp="swiglu",
        pos_encoding="rope",
        rope_theta=500_000.0,
        tie_embeddings=False,
    )
    return tiny_decoder_lm(**{**llama, **overrides})


def _tokens(batch: int = 2) -> jax.Array:
    return jax.random.randint(jax.random.key(0), (batch, 16), 0, 13)


def _params(model: nn.Module, tokens: jax.Array):
    return nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])


def _names(params) -> set[str]:
    return {"/".join(path) for path in flatten_dict(nn.meta.unbox(params))}


def _assert_built_with_llama_options(model: nn.Module, config) -> None:
    """The task's model took every Llama option of the config (train/tasks/lm/task.py
    build_model passes model.norm, model.mlp, model.num_kv_heads and model.rope_theta on)."""
    m = config.model
    built = (model.norm, model.mlp, model.num_kv_heads, model.rope_theta)
    assert built == (m.norm, m.mlp, m.num_kv_heads, m.rope_theta), "build_model drops options"


# -- the published shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(PUBLISHED_COUNTS))
def test_configs_have_the_published_parameter_counts_and_a_grouped_kv_cache(variant):
    config = _llama_config(variant)
    task = build_task(config, splits=NONE)  # synthetic tokens: no data file, no tokenizer
    model = task.model
    _assert_built_with_llama_options(model, config)
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)["params"])
    assert sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes))) == PUBLISHED_COUNTS[variant]
    assert ("head/kernel" in _names(shapes)) == (variant == "8b")  # 1B ties, 8B does not
    m = config.model
    cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, decode=True)["cache"])
    head_dim = m.emb_dim // m.num_heads
    assert cache["block_0"]["attn"]["key"].shape == (1, 8192, m.num_kv_heads, head_dim)


def test_transformer_flops_count_attention_over_all_query_heads():
    """6 N + 12 L T d per token, d = num_heads x head_dim (the width), not the narrower key/value
    projection of grouped-query attention."""
    task = build_task(_llama_config("1b"), splits=NONE)
    _assert_built_with_llama_options(task.model, task.config)
    state = jax.eval_shape(task.init_state, jax.random.key(0))
    tokens = task.examples_per_step()[1]
    m = task.config.model
    attention = 12.0 * m.num_layers * task.block_size * m.num_heads * (m.emb_dim // m.num_heads)
    per_token = 6.0 * PUBLISHED_COUNTS["1b"] + attention
    assert task.flops_per_step(state) == pytest.approx(per_token * tokens, rel=1e-12)


# -- grouped-query attention ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["xla", "reference"])
@pytest.mark.parametrize("kv_heads", [1, 2])  # multi-query and grouped-query attention
def test_kv_cache_decoding_with_grouped_query_attention_equals_full_forward(impl, kv_heads):
    model = _tiny_llama(num_kv_heads=kv_heads, attention_impl=impl)
    tokens = _tokens()
    params = _params(model, tokens)
    full = model.apply({"params": params}, tokens)
    pieces = run_in_pieces(model, params, tokens, PROMPT_THEN_ONE_BY_ONE)
    np.testing.assert_allclose(pieces, full, atol=1e-5, rtol=1e-5)
    cache = model.init(jax.random.key(1), tokens[:, :1], decode=True)["cache"]
    assert cache["block_0"]["attn"]["key"].shape == (2, 16, kv_heads, 4)  # kv heads only


@pytest.mark.parametrize("kv_heads", [0, 2])
def test_as_many_kv_heads_as_heads_is_the_multi_head_model_bit_for_bit(kv_heads):
    tokens = _tokens()
    plain, same = (
        tiny_decoder_lm(pos_encoding="rope"),
        tiny_decoder_lm(pos_encoding="rope", num_kv_heads=kv_heads),
    )
    params, same_params = _params(plain, tokens), _params(same, tokens)
    assert "block_0/attn/qkv_kernel" in _names(same_params)  # the fused kernel, as before
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same_params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        same.apply({"params": params}, tokens), plain.apply({"params": params}, tokens)
    )


def _as_multi_head(params, groups: int):
    """Multi-head parameters computing what grouped-query `params` compute: each key/value head
    repeated for the `groups` query heads that read it (heads k*groups .. k*groups+groups-1)."""

    def convert(tree):
        if not isinstance(tree, dict):
            return tree
        if "kv_kernel" in tree:
            key_value = jnp.repeat(tree["kv_kernel"], groups, axis=2)  # (embed, 2, heads, d)
            qkv = jnp.concatenate([tree["query_kernel"][:, None], key_value], axis=1)
            return {"qkv_kernel": qkv, "out_kernel": tree["out_kernel"]}
        return {name: convert(value) for name, value in tree.items()}

    return convert(params)


def test_grouped_query_attention_equals_multi_head_attention_with_shared_kv_heads():
    tokens = _tokens()
    grouped = _tiny_llama(num_kv_heads=2)
    params = _params(grouped, tokens)
    multi_head = _tiny_llama(num_kv_heads=0)
    want = multi_head.apply({"params": _as_multi_head(params, groups=2)}, tokens)
    np.testing.assert_allclose(grouped.apply({"params": params}, tokens), want, atol=1e-6)


MASKS = ["causal", "causal+padding", "segments"]


def _attention_case(case: str) -> tuple[bool, jax.Array | None]:
    """(causal, mask) over (batch 3, length 8)."""
    if case == "segments":
        segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 2, 2, 3, 3, 3, 3], [1] * 8])
        return False, segment_mask(segments, segments)
    if case == "causal+padding":
        lengths = jnp.asarray([8, 5, 3])
        return True, (jnp.arange(8)[None, :] < lengths[:, None])[:, None, None, :]
    return True, None


def _attention_and_grads(impl: str, case: str, cross: bool = False):
    causal, mask = _attention_case(case)
    module = MultiHeadAttention(
        num_heads=4, num_kv_heads=2, max_len=8, causal=causal, cross=cross, use_rope=not cross,
        rope_theta=500_000.0, use_bias=True, attention_impl=impl,
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (3, 8, 16))
    source = jax.random.normal(jax.random.key(5), (3, 8, 16)) if cross else None
    positions = jnp.broadcast_to(jnp.arange(8)[None], (3, 8))
    params = module.init(jax.random.key(1), x, positions, mask=mask, inputs_kv=source)["params"]

    def loss(p, inputs):
        out = module.apply({"params": p}, inputs, positions, mask=mask, inputs_kv=source)
        return jnp.sum(jnp.sin(out)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return out, grads


@pytest.mark.parametrize("case", [*MASKS, "cross"])
def test_attention_implementations_agree_under_grouped_query_attention(case):
    cross = case == "cross"
    mask_case = "segments" if cross else case
    ref_out, ref_grads = _attention_and_grads("reference", mask_case, cross)
    out, grads = _attention_and_grads("xla", mask_case, cross)
    # Padding rows that see no key are defined differently by the two; every row here sees one.
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_language_model_logits_equal_across_implementations_under_gqa():
    tokens = _tokens()
    params = _params(_tiny_llama(attention_impl="reference"), tokens)
    reference = _tiny_llama(attention_impl="reference").apply({"params": params}, tokens)
    for impl in ("xla", "auto"):
        logits = _tiny_llama(attention_impl=impl).apply({"params": params}, tokens)
        np.testing.assert_allclose(logits, reference, atol=1e-5, rtol=1e-5)


def test_kv_heads_that_do_not_divide_the_heads_are_refused_by_the_model():
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        _params(_tiny_llama(num_kv_heads=3), _tokens())


# -- RMSNorm and SwiGLU --------------------------------------------------------------------------


def _axes(params) -> dict[str, tuple]:
    boxes = flatten_dict(params)
    return {"/".join(path): tuple(box.names) for path, box in boxes.items()}


def test_llama_options_name_their_parameters_with_logical_axes():
    plain = _axes(tiny_decoder_lm().init(jax.random.key(0), _tokens())["params"])
    llama = _axes(_tiny_llama().init(jax.random.key(0), _tokens())["params"])
    assert plain["block_0/ln_attn/LayerNorm_0/scale"] == ("embed",)
    assert plain["block_0/mlp/wi/kernel"] == ("embed", "mlp")
    assert plain["block_0/attn/qkv_kernel"] == ("embed", None, "heads", "kv")
    assert {
        "block_0/ln_attn/RMSNorm_0/scale": ("embed",),
        "block_0/ln_mlp/RMSNorm_0/scale": ("embed",),
        "ln_final/RMSNorm_0/scale": ("embed",),
        "block_0/mlp/wi_gate/kernel": ("embed", "mlp"),
        "block_0/mlp/wi_up/kernel": ("embed", "mlp"),
        "block_0/mlp/wo/kernel": ("mlp", "embed"),
        "block_0/attn/query_kernel": ("embed", "heads", "kv"),
        "block_0/attn/kv_kernel": ("embed", None, "kv_heads", "kv"),
        "block_0/attn/out_kernel": ("heads", "kv", "embed"),
        "head/kernel": ("embed", "vocab"),
    }.items() <= llama.items()
    assert not any("LayerNorm" in name or "bias" in name for name in llama)
    assert "block_0/mlp/wi/kernel" not in llama


def test_rmsnorm_and_swiglu_compute_their_formulas():
    x = jax.random.normal(jax.random.key(0), (2, 3, 16)) * 3.0 + 1.0
    norm = RMSNorm()
    scale = jax.random.normal(jax.random.key(1), (16,))
    out = norm.apply({"params": {"RMSNorm_0": {"scale": scale}}}, x)
    want = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)

    mlp = MLP(hidden_dim=32, kind="swiglu")
    params = nn.meta.unbox(mlp.init(jax.random.key(2), x)["params"])
    gate, up, down = (params[n]["kernel"] for n in ("wi_gate", "wi_up", "wo"))
    want = (jax.nn.silu(x @ gate) * (x @ up)) @ down
    np.testing.assert_allclose(mlp.apply({"params": params}, x), want, atol=1e-5, rtol=1e-5)


# -- the trainer, the sampler and the config checks ---------------------------------------------


def test_test_variant_trains_with_falling_loss_and_samples(tmp_path):
    config = _llama_config("test", **{"train.log_every": "1", "optim.lr": "3e-3"})
    train(config, tmp_path, devices=jax.devices()[:1])
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(losses) == 40 and losses[0] > 4.0  # about ln(65) = 4.17 at the start
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    # The trained model is the Llama-style one: build_model passed every option on.
    task = build_task(config, tmp_path, splits=NONE)
    _assert_built_with_llama_options(task.model, config)
    shapes = jax.eval_shape(task.init_state, jax.random.key(0))
    names = _names(shapes.params)
    assert {"block_0/attn/kv_kernel", "block_0/mlp/wi_gate/kernel"} <= names, names
    assert "ln_final/RMSNorm_0/scale" in names and task.model.rope_theta == 500_000.0
    result = genlab(
        "sample", "--workdir", str(tmp_path), "--num_tokens", "30", "--prompt", "ROMEO:",
        check=True,
    )  # fmt: skip
    assert len(result.stdout) >= 30


def test_tensor_and_fully_sharded_gqa_match_one_device(tmp_path):
    """Key/value heads split over `tensor` like query heads (train/partitioning.py: kv_heads)."""
    quiet = {"train.steps": "3", "train.log_every": "1", "train.eval_every": "1000"}
    one = _llama_config("test", **quiet)
    train(one, tmp_path / "one", devices=jax.devices()[:1])
    mesh = {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"}
    sharded = _llama_config("test", **quiet, **mesh)
    train(sharded, tmp_path / "sharded", devices=jax.devices()[:8])

    def losses(workdir):
        return [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]

    np.testing.assert_allclose(losses(tmp_path / "sharded"), losses(tmp_path / "one"), atol=1e-5)


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run `genlab ARGV` in this process; its error line (exit code 2 asserted)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argument", "words"),
    [
        ("--config.model.num_kv_heads=3", "model.num_kv_heads=3 must divide model.num_heads=4"),
        ("--config.model.num_kv_heads=8", "model.num_kv_heads=8 must divide model.num_heads=4"),
        ("--config.model.num_kv_heads=-1", "model.num_kv_heads=-1 is not allowed; allowed: >= 0"),
        ("--config.model.norm=batchnorm", "model.norm='batchnorm' is not allowed; allowed: one"),
        ("--config.model.mlp=geglu", "model.mlp='geglu' is not allowed; allowed: one of"),
        ("--config.model.rope_theta=0", "model.rope_theta=0.0 is not allowed; allowed: > 1"),
    ],
)
def test_bad_llama_settings_are_one_line_errors(capsys, tmp_path, argument, words):
    workdir = tmp_path / "run"
    argv = ["train", "--config", f"{LLAMA_CONFIG}:test", f"--config.data.path={SHAKESPEARE}"]
    err = _one_line_error(capsys, [*argv, "--workdir", str(workdir), argument])
    assert words in err
    assert not workdir.exists()  # refused before anything was written


def test_the_kv_heads_check_holds_for_every_lm_config():
    """The GPT-style configs have the keys too (defaults: one key/value head per query head)."""
    config = load_config(f"{REPO}/experiments/shakespeare_char.py:cpu")
    m = config.model
    assert (m.norm, m.mlp, m.num_kv_heads, m.rope_theta) == ("layernorm", "plain", 0, 10_000.0)
    with pytest.raises(UserError, match=r"num_kv_heads=3 must divide model\.num_heads=4"):
        apply_overrides(config, {"model.num_kv_heads": "3"})
