"""Sweep definitions: each file's `get_sweep()` returns a `launch.sweep.Sweep`."""
