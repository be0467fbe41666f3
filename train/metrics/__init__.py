"""Metrics shared across families."""
