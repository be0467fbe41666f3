"""Sweep definitions, as data: each file's `get_sweep()` returns a dict of Python literals.

Files here import nothing from genlab: `launch/sweep.py` reads the dict and checks it (a mistake is
one line naming the bad value and what is allowed). Keys:

    base       "experiments/NAME.py:variant", the config every run starts from (required)
    axes       a list of axes (required); the runs are the product of the axes, each axis one of
                 {"grid": {"optim.lr": [1e-3, 3e-3], ...}}  every combination of the values
                 {"zip": {"a": [1, 2], "b": [3, 4]}}      the i-th values together
                 {"random": {"optim.lr": {"loguniform": [3e-4, 3e-3]}, ...}, "count": 6, "seed": 0}
                     `count` draws (seed 0 unless given); samplers: {"uniform": [low, high]},
                     {"loguniform": [low, high]}, {"randint": [low, high]}, {"choice": [values]}
    overrides  {"config.key": value} applied to every run (optional)
    slurm      SLURM resources such as {"nodes": 1, "gpus_per_node": 8} (optional)
"""
