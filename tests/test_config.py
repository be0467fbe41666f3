"""Config loading and overrides: types are kept, mistakes are one-line errors."""

from __future__ import annotations

import pytest
from conftest import LM_CONFIG, SHAKESPEARE, genlab, lm_config, train_args

from launch.config import apply_overrides, load_config
from train.errors import UserError


def test_variants_differ_as_documented():
    cpu = load_config(f"{LM_CONFIG}:cpu")
    gpu = load_config(f"{LM_CONFIG}:gpu")
    assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.emb_dim) == (4, 4, 128)
    assert (cpu.data.block_size, cpu.train.batch_size, cpu.train.steps) == (64, 12, 2000)
    assert (gpu.model.num_layers, gpu.model.num_heads, gpu.model.emb_dim) == (6, 6, 384)
    assert (gpu.data.block_size, gpu.train.batch_size, gpu.train.steps) == (256, 64, 5000)
    assert gpu.model.dropout == 0.2
    assert cpu.train.steps // cpu.train.checkpoint_every >= 3  # several saves per cpu run


def test_overrides_are_typed():
    config = lm_config(
        **{
            "optim.lr": "3e-4",
            "model.num_layers": "3",
            "train.async_checkpoints": "false",
            "model.pos_encoding": "rope",
            "optim.weight_decay": "1",
        }
    )
    assert config.optim.lr == 3e-4 and config.model.num_layers == 3
    assert config.train.async_checkpoints is False and config.model.pos_encoding == "rope"
    assert isinstance(config.optim.weight_decay, float)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("model.nope", "1", "unknown key 'nope' in model"),
        ("nope.lr", "1", "unknown key 'nope'"),
        ("model.num_layers", "2.5", "expected int, got float"),
        ("model.num_layers", "abc", "expected int"),
        ("train.progress_bar", "maybe", "expected a bool"),
        ("model", "3", "is a group of settings"),
    ],
)
def test_bad_overrides_raise_user_errors(key, value, expected):
    config = load_config(f"{LM_CONFIG}:test")
    with pytest.raises(UserError, match=expected):
        apply_overrides(config, {key: value})


def test_unknown_variant_and_missing_file():
    with pytest.raises(UserError, match=r"unknown variant 'huge'.*allowed: cpu, gpu, test"):
        load_config(f"{LM_CONFIG}:huge")
    with pytest.raises(UserError, match="no such config file"):
        load_config("experiments/does_not_exist.py:test")


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_unknown_key_is_one_line(tmp_path):
    result = genlab(*train_args(tmp_path / "w", "--config.model.widht=3"))
    _one_line_error(result, "unknown key 'widht'", "known keys:")


def test_cli_wrong_type_is_one_line(tmp_path):
    result = genlab(*train_args(tmp_path / "w", "--config.train.steps=ten"))
    _one_line_error(result, "--config.train.steps=ten", "expected int")


def test_cli_missing_data_file_is_one_line(tmp_path):
    missing = tmp_path / "missing.txt"
    result = genlab(
        "train",
        "--config",
        f"{LM_CONFIG}:test",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.path={missing}",
    )
    _one_line_error(result, str(missing), "no such file")


def test_cli_mesh_that_does_not_divide_devices(tmp_path):
    result = genlab(*train_args(tmp_path / "w", "--config.mesh.tensor=3"))
    _one_line_error(result, "tensor=3", "8 are present")


def test_cli_batch_not_divisible_by_data_parallel_size(tmp_path):
    result = genlab(*train_args(tmp_path / "w", "--config.train.batch_size=12"))
    _one_line_error(result, "train.batch_size=12", "data-parallel size 8")


def test_cli_argument_mistakes_are_one_line(tmp_path):
    _one_line_error(genlab("train", "--workdir", str(tmp_path / "w")), "--config")
    _one_line_error(genlab("fly"), "invalid choice: 'fly'")
    assert SHAKESPEARE.is_file()


def test_cpu_is_split_into_as_many_devices_as_divide_the_batch():
    from launch.cpu_devices import cpu_device_count

    config = lm_config(**{"train.batch_size": "12"})
    assert cpu_device_count(config, cores=2) == 2
    assert cpu_device_count(config, cores=8) == 6  # the largest count <= 8 that divides 12
    apply_overrides(config, {"train.grad_accum": "4"})  # micro-batches of 3
    assert cpu_device_count(config, cores=8) == 3
    apply_overrides(config, {"mesh.cpu_devices": "1"})
    assert cpu_device_count(config, cores=8) == 1
