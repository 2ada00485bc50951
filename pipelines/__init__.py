"""Diffusers pipelines of hfgen (installed as ``hfgen.pipelines``)."""

from .pipeline_hvae import HierarchicalVAEPipeline
from .pipeline_vae import VAEPipeline

__all__ = ["VAEPipeline"]
__all__ += ["HierarchicalVAEPipeline"]
