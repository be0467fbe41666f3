"""Random search over learning rate and dropout (fixed seed, 6 draws) zipped with nothing else.

genlab sweep experiments/sweeps/shakespeare_random_lr.py --dry-run
"""

from launch.sweep import Sweep, loguniform, random_search, uniform


def get_sweep() -> Sweep:
    return Sweep(
        base="experiments/shakespeare_char.py:cpu",
        axes=[
            random_search(
                {"optim.lr": loguniform(3e-4, 3e-3), "model.dropout": uniform(0, 0.2)},
                count=6,
                seed=0,
            )
        ],
    )
