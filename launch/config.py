"""Load an experiment config (`path.py:variant`), apply `--config.a.b=value` overrides, check it.

ml_collections' ConfigDict does the type checking; this module only turns command-line text into
typed values and turns every failure into a one-line `UserError`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

from launch.validate import check_config
from train.errors import UserError

# Keys every experiment has without its file declaring them; train/transfer.py reads them.
COMMON_DEFAULTS: dict[str, str] = {
    "init_from": "",  # WORKDIR[:STEP]: start from that run's parameters (matched by name, shape)
    "freeze": "",  # regex over '/'-joined parameter names: keep those parameters fixed
}


def add_common_defaults(config: ml_collections.ConfigDict) -> None:
    """Give `config` the keys of COMMON_DEFAULTS that it lacks (its own values win)."""
    with config.unlocked():
        for key, value in COMMON_DEFAULTS.items():
            if key not in config:
                config[key] = value


def load_python_file(path: str, function: str, flag: str, kind: str, expected: str) -> Any:
    """Import an experiment or sweep file by path; it must define `function`."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag}: no such {kind} file {path!r} (expected {expected})")
    module_spec = importlib.util.spec_from_file_location(f"genlab_{kind}_{file.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise UserError(f"{flag}: {path} line {error.lineno}: {error.msg}") from None
    except Exception as error:  # the file's own code failed: say where, in one line
        raise UserError(f"{flag}: {path} failed to load: {type(error).__name__}: {error}") from None
    if not hasattr(module, function):
        raise UserError(f"{flag}: {path} defines no {function}()")
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `file.py[:variant]` and call its `get_config(variant)`."""
    path, _, variant = spec.partition(":")
    module = load_python_file(
        path, "get_config", "--config", "config", "experiments/NAME.py[:variant]"
    )
    variants = getattr(module, "VARIANTS", None)
    if variants is not None and variant not in variants:
        raise UserError(
            f"--config: unknown variant {variant!r} of {path}; allowed: {', '.join(variants)}"
        )
    config = module.get_config(variant) if variant else module.get_config()
    add_common_defaults(config)
    config.lock()
    return config


def parse_value(text: str, current: Any, key: str) -> Any:
    """Parse override text into the type of the value it replaces."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"--config.{key}={text}: expected a bool (true/false)")
    if isinstance(current, str) or current is None:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(
            f"--config.{key}={text}: expected {type(current).__name__}, got unparsable text"
        ) from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(current):
        raise UserError(
            f"--config.{key}={text}: expected {type(current).__name__}, got {type(value).__name__}"
        )
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Set `a.b.c` keys from text, then check the whole config (launch/validate.py); unknown
    keys, wrong types and values out of range are `UserError`s."""
    for key, text in overrides.items():
        node: Any = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:depth]) or "the config"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise UserError(
                    f"--config.{key}: unknown key {part!r} in {where}; "
                    f"known keys: {', '.join(known)}"
                )
            if depth < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"--config.{key}: is a group of settings, set one of its keys instead")
        with config.unlocked():
            try:
                node[parts[-1]] = parse_value(text, current, key)
            except TypeError as error:
                raise UserError(f"--config.{key}={text}: {error}") from None
    check_config(config)


def split_config_args(argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Separate `--config SPEC`, `--config.k=v` overrides and the remaining arguments."""
    spec, overrides, rest = None, {}, []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            spec = next(args, None)
            if spec is None:
                raise UserError("--config needs a value: experiments/NAME.py[:variant]")
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            key, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                value = next(args, None)
                if value is None:
                    raise UserError(f"--config.{key} needs a value")
            overrides[key] = value
        else:
            rest.append(arg)
    return spec, overrides, rest


def config_from_args(spec: str, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    config = load_config(spec)
    apply_overrides(config, overrides)
    return config


def read_config(path: Path) -> ml_collections.ConfigDict:
    """Read a workdir's `config.json` back as a locked ConfigDict (tuples come back as lists)."""
    if not path.is_file():
        raise UserError(f"--workdir: {path.parent} holds no config.json (is it a genlab workdir?)")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    add_common_defaults(config)  # workdirs written before these keys existed
    config.lock()
    return config
