"""DDPM-style diffusion: the task in `task.py`; noise schedules, the DDPM/DDIM samplers and the
variational bound in `schedule.py`."""

from train.tasks.diffusion.task import Task

__all__ = ["Task"]
