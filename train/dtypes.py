"""The compute and parameter dtypes a model config may name, checked in one place."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from train.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_dtypes(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"dtype": ..., "param_dtype": ...} of `model.dtype` and `model.param_dtype`."""
    out = {}
    for field in ("dtype", "param_dtype"):
        name = model_config[field]
        if name not in DTYPES:
            raise UserError(f"model.{field}={name!r} is unknown; allowed: {', '.join(DTYPES)}")
        out[field] = DTYPES[name]
    return out
