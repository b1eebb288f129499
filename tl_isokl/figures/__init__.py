"""Figures: every function takes `ax=None` and returns the Axes (or Figure); none computes statistics."""
