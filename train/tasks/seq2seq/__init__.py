"""Encoder-decoder translation: the task in `task.py`, greedy and beam search with KV caches in
`search.py`."""

from train.tasks.seq2seq.task import Task

__all__ = ["Task"]
