"""`genlab plan`: the real train step compiled for a mesh of simulated devices (or a TPU slice
described by libtpu), with memory, sharding, collectives, FLOPs and a roofline estimate."""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA, genlab
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments import gpt2_synthetic
from train.errors import UserError
from train.plan import _refused, hlo, make_plan
from train.plan.targets import GIB, resolve, tpu_topology_name

GPT_TEST = "experiments/gpt2_synthetic.py:test"


def plan_for(**mesh: int) -> dict:
    config = gpt2_synthetic.get_config("test")
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
    return make_plan(config, resolve(f"cpu:{np.prod(list(mesh.values()) or [1])}", "h100"))


@pytest.mark.parametrize(
    "mesh", [{"fsdp": 8}, {"tensor": 2, "data": 4}, {"data": 2, "fsdp": 2, "tensor": 2}]
)
def test_plan_compiles_fsdp_tensor_and_mixed_meshes(mesh):
    plan = plan_for(**mesh)
    assert plan["devices"] == 8 and plan["simulated"]
    assert plan["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
    memory = plan["memory_per_device"]
    assert memory["parameters"] > 0 and memory["optimizer_state"] >= 2 * memory["parameters"]
    assert memory["peak"] >= memory["arguments"] and memory["fits"]
    # The compiled FLOPs and the 6N + 12LTd model count the same step (attention's softmax,
    # the loss and the optimizer are the compiler's extras).
    flops = plan["flops"]
    assert 0.8 < flops["compiled_total"] / flops["model"] < 2.0
    assert plan["collectives"], "a sharded step must communicate"
    estimate = plan["estimate"]
    assert estimate["step_seconds_overlapped"] <= estimate["step_seconds_serial"]
    assert 0 < estimate["mfu_serial"] <= estimate["mfu_overlapped"]
    by_path = {row["path"]: row for row in plan["sharding"]}
    qkv = by_path["block_0/attn/qkv_kernel"]
    assert qkv["logical"] == ["embed", None, "heads", "kv"]
    expected = [mesh.get("fsdp", 1), 1, mesh.get("tensor", 1), 1]
    assert [s // d for s, d in zip(qkv["shape"], qkv["per_device"], strict=True)] == expected


def test_parameter_bytes_per_device_fall_as_one_over_fsdp():
    whole = plan_for(fsdp=1)["memory_per_device"]["parameters"]
    for devices in (2, 4, 8):
        share = plan_for(fsdp=devices)["memory_per_device"]["parameters"]
        assert abs(share * devices / whole - 1) < 0.10, (devices, share, whole)


def test_any_family_plans_through_the_same_step(tmp_path):
    out = tmp_path / "gan.json"
    result = genlab(
        "plan", "--config", "experiments/gan_mnist.py:test", "--topology", "cpu:8",
        f"--config.data.path={DATA / 'mnist'}", "--config.mesh.data=-1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    memory = plan["memory_per_device"]
    # Both networks' weights count as parameters, both Adams' moments as optimizer state.
    assert memory["optimizer_state"] >= 2 * memory["parameters"] > 0
    paths = {row["path"].split("/")[0] for row in plan["sharding"]}
    assert paths == {"generator", "discriminator"}


def test_collectives_inside_loops_count_once_per_iteration():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("fsdp", "tensor"))
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    x = jax.ShapeDtypeStruct(
        (3, 16, 64), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "fsdp"))
    )

    def summed_grads(w, x):
        def body(total, rows):
            return total + jax.grad(lambda w: jnp.sum(jnp.tanh(rows @ w)))(w), None

        return jax.lax.scan(body, jnp.zeros_like(w), x)[0]

    compiled = jax.jit(summed_grads).lower(w, x).compile()
    found = hlo.collectives(compiled.as_text(), 8)
    reduces = [c for c in found if c.kind == "all-reduce" and c.bytes == 64 * 32 * 4]
    assert sum(c.count for c in reduces) == 3 and all(c.group == 4 for c in reduces)


def test_replica_groups_in_each_of_xlas_spellings():
    assert hlo._group_size("replica_groups=[2,4]<=[4,2]T(1,0), x", 8) == 4
    assert hlo._group_size("replica_groups={{0,2,4,6},{1,3,5,7}}, x", 8) == 4
    assert hlo._group_size("replica_groups=mesh['a'=4,'b'=1,'c'=2] {'a','c'}, x", 8) == 8
    assert hlo._group_size("replica_groups=mesh['a'=4,'b'=1,'c'=2] {'c'}, x", 8) == 2
    assert hlo._group_size("replica_groups={}, x", 8) == 8


def test_ring_time_model():
    gather = hlo.Collective("all-gather", 1, 8e9, 8)
    assert hlo.ring_seconds(gather, 1e9) == pytest.approx(7.0)
    reduce = hlo.Collective("all-reduce", 1, 8e9, 8)
    assert hlo.ring_seconds(reduce, 1e9) == pytest.approx(14.0)
    assert hlo.ring_seconds(hlo.Collective("all-reduce", 1, 8e9, 1), 1e9) == 0


def test_a_config_too_big_for_the_stated_memory_is_reported_with_its_shortfall(tmp_path):
    out = tmp_path / "plan.json"
    result = genlab(
        "plan", "--config", GPT_TEST, "--topology", "cpu:8", "--hbm_gib", "0.0001",
        "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "DOES NOT FIT: short by" in result.stdout
    memory = json.loads(out.read_text())["memory_per_device"]
    assert memory["fits"] is False
    assert memory["shortfall"] == memory["peak"] - int(0.0001 * GIB) > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--topology", "cpu:8", "--config.mesh.data=3"], "mesh: data=3"),
        (["--topology", "cpu:8", "--config.mesh.data=2", "--config.mesh.tensor=4"], "heads"),
        (["--topology", "cpu:99"], "allowed: cpu:1 to cpu:8"),
        (["--topology", "v7-8"], "allowed: a TPU slice"),
        (["--topology", "v5p-6"], "no such v5p slice"),
        (["--topology", "cpu:8", "--device", "b200"], "--device=b200: unknown"),
        (["--topology", "cpu:8", "--hbm_gib", "0"], "--hbm_gib=0.0"),
    ],
)
def test_bad_plans_are_one_line(flags, message):
    result = genlab("plan", "--config", GPT_TEST, *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_compiler_refusing_for_memory_gives_a_plan_that_does_not_fit():
    report = {"topology": "v5p-256", "memory_per_device": {"parameters": 1, "hbm": 95 * GIB}}
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (110.04G) exceeds available HBM (95.74G).\nmore detail"
    )
    memory = _refused(report, message, 95 * GIB, 1.0)["memory_per_device"]
    assert memory["fits"] is False and memory["peak"] is None
    assert memory["shortfall"] == pytest.approx((110.04 - 95.74) * GIB, rel=1e-6)
    with pytest.raises(UserError, match="the compiler refused the step: INTERNAL: no"):
        _refused(report, "INTERNAL: no\nmore", 95 * GIB, 1.0)


def test_tpu_slice_names_map_to_libtpu_chip_grids():
    assert tpu_topology_name("v5p-256") == ("v5p", "v5p:4x4x8")
    assert tpu_topology_name("v5e-256") == ("v5e", "v5e:16x16")
    assert tpu_topology_name("v4-8") == ("v4", "v4:2x2x1")
    with pytest.raises(UserError, match="no such v4 slice"):
        tpu_topology_name("v4-12")


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here"
)
def test_a_tpu_slice_without_libtpu_says_how_to_get_it():
    result = genlab("plan", "--config", GPT_TEST, "--topology", "v5e-8")
    assert result.returncode == 2 and "pip install -e '.[plan]'" in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install -e '.[plan]'"
)
def test_plan_compiles_for_a_tpu_slice_with_libtpu(tmp_path):
    out = tmp_path / "plan.json"
    result = genlab(
        "plan", "--config", GPT_TEST, "--topology", "v5e-8", "--config.mesh.data=1",
        "--config.mesh.fsdp=-1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    assert plan["devices"] == 8 and not plan["simulated"] and "TPU" in plan["device_kind"]
    assert plan["estimate"]["device"] == "v5e" and plan["memory_per_device"]["fits"]
    assert {c["kind"] for c in plan["collectives"]} & {"all-gather", "reduce-scatter", "all-reduce"}
