"""Decoder language models (Transformer, selective SSM, LSTM): the task in `task.py`, and the
token sampling only this family and its benchmarks use in `sampling.py`."""

from train.tasks.lm.task import Task

__all__ = ["Task"]
