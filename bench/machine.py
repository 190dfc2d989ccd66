"""What machine a benchmark ran on, for the JSON reports of the bench/ scripts."""

from sam3_model.info import cpu_model

__all__ = ["cpu_model"]
