"""Saving, loading and importing models."""
from probe.io.checkpoint import load_model, read_config, save_model

__all__ = ["load_model", "read_config", "save_model"]
