"""Random search over learning rate and dropout (fixed seed, 6 draws) zipped with nothing else.

genlab sweep experiments/sweeps/shakespeare_random_lr.py --dry-run
"""


def get_sweep() -> dict:
    return {
        "base": "experiments/shakespeare_char.py:cpu",
        "axes": [
            {
                "random": {
                    "optim.lr": {"loguniform": [3e-4, 3e-3]},
                    "model.dropout": {"uniform": [0, 0.2]},
                },
                "count": 6,
                "seed": 0,
            }
        ],
    }
