"""Learning rate x width on the character-level Shakespeare LM (2 x 2 grid of the `test` model).

genlab sweep experiments/sweeps/shakespeare_lr_width.py --dry-run
genlab sweep experiments/sweeps/shakespeare_lr_width.py            # runs here, one at a time
genlab compare runs/sweeps/shakespeare_lr_width --metric eval/loss
"""


def get_sweep() -> dict:
    return {
        "base": "experiments/shakespeare_char.py:test",
        "overrides": {"data.path": "../shared/data/tinyshakespeare/input.txt"},
        "axes": [{"grid": {"optim.lr": [1e-3, 3e-3], "model.emb_dim": [32, 64]}}],
        "slurm": {"nodes": 1, "gpus_per_node": 1, "timeout_min": 30, "partition": None},
    }
