"""Pure Flax Linen modules; nothing here knows about training."""
