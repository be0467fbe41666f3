"""Device mesh from config, the logical-axis rules table, and shardings for state and batches.

One rules table serves every strategy: an axis of size 1 in the mesh shards nothing, so
data-parallel, FSDP and tensor-parallel runs differ only in `config.mesh`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from train.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes, in priority order. A mesh axis already taken by an earlier dimension
# of the same array is skipped (so activations keep `embed` replicated while `batch` uses fsdp).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query attention's key/value heads, split like `heads`
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolve the `data/fsdp/tensor` sizes of the config; one of them may be -1 (the rest)."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    described = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(
            f"mesh: {described} is not allowed; sizes are positive and at most one may be -1"
        )
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        raise UserError(
            f"mesh: {described} needs a multiple of {known} devices, but {num_devices} are present"
        )
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh: {described} covers {math.prod(sizes)} devices, but {num_devices} are present; "
            "make the product equal the device count or set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axes: sharding follows the in/out shardings and logical constraints we give.
    return Mesh(
        np.asarray(devices).reshape(shape),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    )


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.Partitioned` boxes (others replicate).

    A dimension whose size the mesh axes do not divide (say a 65-character vocabulary over two
    tensor-parallel devices) is replicated instead of failing.
    """
    _check_heads_divide(boxed_tree, mesh)
    specs = nn.get_partition_spec(boxed_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
    shapes = nn.meta.unbox(boxed_tree)
    return jax.tree.map(lambda s, x: _divisible(s, x.shape, mesh), shardings, shapes)


# Replicating attention heads the tensor axis does not divide would quietly turn tensor
# parallelism off for attention: refused instead (a vocabulary of 65 may replicate).
STRICT_AXES = ("heads", "kv_heads")


def _check_heads_divide(boxed_tree: Any, mesh: Mesh) -> None:
    rules = dict(LOGICAL_RULES)
    is_box = lambda x: isinstance(x, nn.Partitioned)
    for path, box in jax.tree_util.tree_flatten_with_path(boxed_tree, is_leaf=is_box)[0]:
        if not is_box(box):
            continue
        for size, name in zip(box.value.shape, box.names, strict=False):
            if name not in STRICT_AXES or rules.get(name) is None:
                continue
            axes = (rules[name],) if isinstance(rules[name], str) else tuple(rules[name])
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                where = jax.tree_util.keystr(path)
                raise UserError(
                    f"mesh: {'x'.join(axes)}={ways} does not divide the {size} {name} of "
                    f"{where}; allowed: a {'x'.join(axes)} size that divides {size}"
                )


def _divisible(sharding: NamedSharding, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for dim, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if shape[dim] % math.prod(mesh.shape[n] for n in names):
            spec[dim] = None
    return NamedSharding(mesh, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), LOGICAL_RULES)
    return NamedSharding(mesh, spec)


def batch_shardings(mesh: Mesh, batch_axes: Mapping[str, Sequence[str | None]]) -> dict:
    return {name: batch_sharding(mesh, axes) for name, axes in batch_axes.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict:
    """Assemble this process's rows of the batch into global arrays laid out as `shardings`."""
    for name, value in local.items():
        rows = len(value) * jax.process_count()
        ways = data_parallel_size(shardings[name].mesh)
        if rows % ways:
            raise UserError(
                f"a batch of {rows} rows ({name!r}) cannot be split over {ways} data-parallel "
                "devices; make the batch sizes (train.batch_size, train.eval_batch_size) "
                f"multiples of {ways}"
            )
    return {
        name: jax.make_array_from_process_local_data(shardings[name], np.asarray(value))
        for name, value in local.items()
    }


def check_batch_divides(batch_size: int, mesh: Mesh, grad_accum: int = 1) -> None:
    """The global batch must split evenly over data-parallel devices, hosts and micro-batches."""
    ways = data_parallel_size(mesh)
    if batch_size % (ways * grad_accum) or batch_size % jax.process_count():
        raise UserError(
            f"train.batch_size={batch_size} must be divisible by the data-parallel size "
            f"{ways} (mesh data x fsdp) times train.grad_accum={grad_accum}, "
            f"and by the {jax.process_count()} processes"
        )


@dataclass
class Placement:
    """Where the state and batches live: the mesh, state shardings and batch shardings."""

    mesh: jax.sharding.Mesh
    state: Any
    batch: dict[str, jax.sharding.NamedSharding]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The mesh and logical-axis rules that model code traces under."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_RULES):
            yield
