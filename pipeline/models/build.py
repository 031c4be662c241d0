"""The generator of a job, built from its kind's entry in `pipeline.contract.generators`."""
from __future__ import annotations

import importlib

from ..contract.generators import generator_kind


def build_generator(cfg, device):
    """The generator of `cfg.kind`, loaded on `device` (its module imported only now)."""
    module, cls = generator_kind(cfg.kind).implementation.split(":")
    return getattr(importlib.import_module(module), cls)(cfg, device)
