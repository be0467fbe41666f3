"""The machinery every model family shares: trainer, sharding, checkpoints, data, tasks, metrics."""
