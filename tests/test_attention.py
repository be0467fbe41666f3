"""Attention implementations and remat policies: every fused path equals the reference einsum
attention (outputs and gradients), the KV cache works on each, and remat changes no number."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import lm_config, run_in_pieces, tiny_decoder_lm

from models.layers import REMAT_POLICIES, MultiHeadAttention, resolve_attention_impl
from models.transformer import DecoderLM, segment_mask
from train.errors import UserError
from train.tasks.lm.task import build_model

WIDTH, HEADS, LENGTH, BATCH = 16, 2, 8, 3
PROMPT_THEN_ONE_BY_ONE = list(range(6, 16))  # decode a 16-token row as 6 tokens, then 1 by 1


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """float32 products in float32 on a GPU too (TF32 there would exceed these tolerances)."""
    with jax.default_matmul_precision("highest"):
        yield


def _attention(impl: str, **kwargs) -> MultiHeadAttention:
    return MultiHeadAttention(num_heads=HEADS, max_len=LENGTH, attention_impl=impl, **kwargs)


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    x = jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, WIDTH))
    positions = jnp.broadcast_to(jnp.arange(LENGTH)[None], (BATCH, LENGTH))
    return x, positions


def _padding_mask() -> jax.Array:
    """Rows of 8, 5 and 3 real tokens: (batch, 1, 1, key) True where the key is real."""
    lengths = jnp.asarray([8, 5, 3])
    return (jnp.arange(LENGTH)[None, :] < lengths[:, None])[:, None, None, :]


def _packed_segments() -> jax.Array:
    """Two or three sequences packed per row, 0 = padding (as the translation pipeline packs)."""
    return jnp.asarray(
        [[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 2, 2, 3, 3, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    )


def _mask(kind: str | None) -> jax.Array | None:
    if kind == "padding":
        return _padding_mask()
    if kind == "segments":
        segments = _packed_segments()
        return segment_mask(segments, segments)
    return None


def _seen(mask: jax.Array | None) -> np.ndarray:
    """(batch, query) True where a query row may attend to at least one key."""
    if mask is None:
        return np.ones((BATCH, LENGTH), bool)
    return np.asarray(jnp.broadcast_to(mask, (BATCH, 1, LENGTH, LENGTH)).any(-1)[:, 0])


def _value_and_grads(module: nn.Module, params, x, positions, **call):
    def loss(p, inputs):
        out = module.apply({"params": p}, inputs, positions, **call)
        return jnp.sum(jnp.sin(out)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return out, grads


CASES = {
    "causal": dict(causal=True, mask=None),
    "bidirectional": dict(causal=False, mask=None),
    "causal+padding": dict(causal=True, mask="padding"),
    "bidirectional+padding": dict(causal=False, mask="padding"),
    "segments": dict(causal=False, mask="segments"),
    "causal+segments": dict(causal=True, mask="segments"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rope", [False, True])
def test_xla_attention_equals_reference_outputs_and_gradients(case, rope):
    causal, mask_kind = CASES[case]["causal"], CASES[case]["mask"]
    mask = _mask(mask_kind)
    x, positions = _inputs()
    reference = _attention("reference", causal=causal, use_rope=rope)
    params = reference.init(jax.random.key(1), x, positions, mask=mask)["params"]
    ref_out, ref_grads = _value_and_grads(reference, params, x, positions, mask=mask)
    out, grads = _value_and_grads(
        _attention("xla", causal=causal, use_rope=rope), params, x, positions, mask=mask
    )
    # Fully masked query rows (padding attending to nothing) are defined differently by the two;
    # compare the rows that see at least one key, and gradients through those rows only.
    seen = _seen(mask)
    np.testing.assert_allclose(np.asarray(out)[seen], np.asarray(ref_out)[seen], atol=2e-5)
    if seen.all():
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_xla_cross_attention_equals_reference():
    x, positions = _inputs(0)
    source = jax.random.normal(jax.random.key(5), (BATCH, LENGTH, WIDTH))
    mask = _padding_mask()
    reference = _attention("reference", causal=False, cross=True)
    params = reference.init(jax.random.key(1), x, positions, mask=mask, inputs_kv=source)["params"]
    call = dict(mask=mask, inputs_kv=source)
    ref_out, ref_grads = _value_and_grads(reference, params, x, positions, **call)
    out, grads = _value_and_grads(
        _attention("xla", causal=False, cross=True), params, x, positions, **call
    )
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def _lm(impl: str = "xla", remat: str = "none", dropout: float = 0.0) -> DecoderLM:
    return tiny_decoder_lm(pos_encoding="rope", dropout=dropout, attention_impl=impl, remat=remat)


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_kv_cache_decoding_equals_full_forward(impl):
    model = _lm(impl)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])
    full = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(
        run_in_pieces(model, params, tokens, PROMPT_THEN_ONE_BY_ONE), full, atol=1e-5, rtol=1e-5
    )


def test_language_model_logits_equal_across_implementations():
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = nn.meta.unbox(_lm("reference").init(jax.random.key(1), tokens)["params"])
    reference = _lm("reference").apply({"params": params}, tokens)
    for impl in ("xla", "auto"):
        np.testing.assert_allclose(
            _lm(impl).apply({"params": params}, tokens), reference, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_changes_no_parameter_loss_or_gradient(policy):
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    plain, remat = _lm(remat="none", dropout=0.1), _lm(remat=policy, dropout=0.1)
    params = nn.meta.unbox(plain.init(jax.random.key(1), tokens)["params"])
    remat_params = nn.meta.unbox(remat.init(jax.random.key(1), tokens)["params"])
    assert jax.tree.structure(params) == jax.tree.structure(remat_params)

    def loss(model, p):
        logits = model.apply(
            {"params": p}, tokens, deterministic=False, rngs={"dropout": jax.random.key(7)}
        )
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    assert "remat" in str(jax.make_jaxpr(lambda p: loss(remat, p))(params))  # really remat
    assert "remat" not in str(jax.make_jaxpr(lambda p: loss(plain, p))(params))
    want, want_grads = jax.value_and_grad(lambda p: loss(plain, p))(params)
    got, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_attention_weight_dropout_only_on_the_reference_path():
    x, positions = _inputs()
    rngs = {"dropout": jax.random.key(3)}
    for impl, changes in (("reference", True), ("xla", False)):
        module = _attention(impl, attention_dropout=0.5)
        params = module.init(jax.random.key(1), x, positions)["params"]
        kept = module.apply({"params": params}, x, positions)
        dropped = module.apply({"params": params}, x, positions, deterministic=False, rngs=rngs)
        assert changes != np.allclose(kept, dropped), impl


def test_auto_resolves_to_cudnn_on_a_gpu_only_and_decoding_never_uses_cudnn():
    gpu = jax.default_backend() == "gpu"
    assert resolve_attention_impl("auto", jnp.bfloat16, 64) == ("cudnn" if gpu else "xla")
    assert resolve_attention_impl("auto", jnp.float32, 64) == "xla"
    assert resolve_attention_impl("auto", jnp.bfloat16, 64, decode=True) == "xla"
    assert resolve_attention_impl("cudnn", jnp.bfloat16, 64, decode=True) == "xla"
    assert resolve_attention_impl("reference", jnp.float32, 64, decode=True) == "reference"
    with pytest.raises(ValueError, match="unknown"):
        resolve_attention_impl("flash", jnp.float32, 64)


def test_bad_attention_settings_are_one_line_errors():
    config = lm_config(**{"model.attention_impl": "cudnn"})
    with pytest.raises(UserError, match=r"attention_impl='cudnn' needs a GPU.*backend cpu"):
        build_model(config.model, 16, 13)
    with pytest.raises(UserError, match=r"attention_impl='flash' is not allowed; allowed: one"):
        lm_config(**{"model.attention_impl": "flash"})
    with pytest.raises(UserError, match=r"model.remat='some' is not allowed; allowed: one of"):
        lm_config(**{"model.remat": "some"})


on_gpu = pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="cuDNN flash attention needs a CUDA GPU"
)


@on_gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cudnn_attention_equals_reference_on_gpu(case):
    """bf16 cuDNN against the reference path computed in float32 on the same rounded inputs."""
    causal, mask_kind = CASES[case]["causal"], CASES[case]["mask"]
    mask = _mask(mask_kind)
    x, positions = _inputs()
    x = x.astype(jnp.bfloat16)
    reference = _attention("reference", causal=causal)
    params = reference.init(jax.random.key(1), x, positions, mask=mask)["params"]
    ref_out, ref_grads = _value_and_grads(
        reference, params, x.astype(jnp.float32), positions, mask=mask
    )
    fused = _attention("cudnn", causal=causal, dtype=jnp.bfloat16)
    out, grads = _value_and_grads(fused, params, x, positions, mask=mask)
    seen = _seen(mask)
    out = np.asarray(out.astype(jnp.float32))
    np.testing.assert_allclose(out[seen], np.asarray(ref_out)[seen], atol=3e-2, rtol=3e-2)
    if seen.all():
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            a = np.asarray(a, np.float32)
            assert np.linalg.norm(a - b) <= 3e-2 * np.linalg.norm(b) + 1e-3


@on_gpu
def test_cudnn_language_model_decodes_like_its_full_forward_on_gpu():
    model = DecoderLM(
        vocab_size=13, num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64, max_len=16,
        attention_impl="cudnn", dtype=jnp.bfloat16,
    )  # fmt: skip
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])
    full = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(
        run_in_pieces(model, params, tokens, PROMPT_THEN_ONE_BY_ONE), full, atol=5e-2, rtol=5e-2
    )
