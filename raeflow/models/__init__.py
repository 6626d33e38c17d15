"""The autoencoder zoo: `create_model(name, **overrides)`, `list_presets()`, bundles (save/load).

Plain PyTorch, no Ray: every family is one file, every model has the interface of `base.Autoencoder`.
"""

from raeflow.models.base import Autoencoder
from raeflow.models.bundle import Bundle, load_bundle, save_bundle
from raeflow.models.registry import PresetInfo, create_model, list_families, list_presets

__all__ = [
    "Autoencoder",
    "Bundle",
    "PresetInfo",
    "create_model",
    "list_families",
    "list_presets",
    "load_bundle",
    "save_bundle",
]
