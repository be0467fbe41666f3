"""Which tokenizer a text run (LM or seq2seq) uses, and the same one on every process.

In order: the run's own (it is resuming), `data.tokenizer_from`'s, the `init_from` source's (its
parameters only mean something with its token ids), else one fitted now. A tokenizer taken from
another run must agree with `data.tokenizer` and a non-zero `data.vocab_size`: a mismatch is an
error, never silently overridden. In a multi-process run only process 0 fits; it saves the
tokenizer into the workdir and every process then loads that file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
from jax.experimental import multihost_utils

from train.data.tokenizers import (
    TOKENIZER_FILE,
    Tokenizer,
    check_settings,
    load_tokenizer,
    save_tokenizer,
)
from train.errors import UserError
from train.transfer import parse_source


def reused_tokenizer(config: ml_collections.ConfigDict, workdir: Path | None) -> Tokenizer | None:
    """The tokenizer this run must reuse, or None when it fits its own."""
    if workdir is not None and (workdir / TOKENIZER_FILE).is_file():
        return load_tokenizer(workdir)  # resuming: fitted from this very config
    explicit = config.data.get("tokenizer_from", "")
    if explicit:
        setting = f"data.tokenizer_from={explicit!r}"
        return _agreeing(load_tokenizer(Path(explicit), setting), setting, config.data)
    source = config.get("init_from", "")
    if source:
        folder, _ = parse_source(source)
        if (folder / TOKENIZER_FILE).is_file():
            return _agreeing(load_tokenizer(folder), f"init_from={source!r}", config.data)
    return None


def _agreeing(tokenizer: Tokenizer, origin: str, data: ml_collections.ConfigDict) -> Tokenizer:
    """`tokenizer`, if it is of the configured kind and (when set) size."""
    kind, size = data.tokenizer, data.get("vocab_size", 0)
    have = f"{origin} has a {tokenizer.kind} tokenizer of {tokenizer.vocab_size} entries"
    if kind != tokenizer.kind:
        raise UserError(f"data.tokenizer={kind!r} but {have}; set data.tokenizer={tokenizer.kind}")
    if kind != "char" and size and size != tokenizer.vocab_size:
        raise UserError(
            f"data.vocab_size={size} but {have}; set data.vocab_size={tokenizer.vocab_size} or 0"
        )
    return tokenizer


def run_tokenizer(
    config: ml_collections.ConfigDict,
    workdir: Path | None,
    fit: Callable[[], Tokenizer] | None,
) -> Tokenizer:
    """The run's tokenizer: reused (see the module docstring) or made by `fit` (None: no data
    was loaded, so there is nothing to fit on)."""
    many = jax.process_count() > 1 and workdir is not None
    reused = reused_tokenizer(config, workdir)
    if many:  # every process has looked before process 0 writes a tokenizer.json
        multihost_utils.sync_global_devices("genlab: tokenizer looked up")
    if reused is not None:
        return reused
    if fit is None:
        raise UserError("no tokenizer: the workdir has none and no data was loaded")
    check_settings(config.data.tokenizer, config.data.get("vocab_size", 0))
    if not many:
        return fit()
    if jax.process_index() == 0:
        save_tokenizer(fit(), workdir)
    multihost_utils.sync_global_devices("genlab: tokenizer fitted")
    return load_tokenizer(workdir)
