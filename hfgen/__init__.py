"""hfgen: latent-variable image models for Hugging Face Diffusers.

    from hfgen import VAEModel, VAEPipeline
    pipe = VAEPipeline.from_pretrained("path/or/repo")
    images = pipe(batch_size=16).images

The names below are imported on first use, so that ``import hfgen.cli`` (the ``hfgen`` command's parser and
``--help``) does not import torch and diffusers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: each public name and the module that defines it
_EXPORTS = {
    "LikelihoodBoundsOutput": "hfgen.models",
    "VAEModel": "hfgen.models",
    "VAEOutput": "hfgen.models",
    "get_likelihood": "hfgen.models",
    "nats_to_bits_per_dim": "hfgen.models",
    "HierarchicalVAEModel": "hfgen.models",
    "HierarchicalVAEOutput": "hfgen.models",
    "VAEPipeline": "hfgen.pipelines",
    "HierarchicalVAEPipeline": "hfgen.pipelines",
    "ClassConditionalDDPMPipeline": "hfgen.pipelines",
    "LatentDiffusionPipeline": "hfgen.pipelines",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
