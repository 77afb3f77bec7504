"""Sweep orchestration: specs, grid, Ray Tune runner, MLflow record, cross-seed aggregation, CLI."""

__version__ = "0.1.0"
