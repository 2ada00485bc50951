"""hfgen: latent-variable image models for Hugging Face Diffusers.

    from hfgen import VAEModel, VAEPipeline
    pipe = VAEPipeline.from_pretrained("path/or/repo")
    images = pipe(batch_size=16).images
"""

__version__ = "0.1.0"

from .models import LikelihoodBoundsOutput, VAEModel, VAEOutput, get_likelihood, nats_to_bits_per_dim
from .models import HierarchicalVAEModel, HierarchicalVAEOutput
from .pipelines import ClassConditionalDDPMPipeline, HierarchicalVAEPipeline, LatentDiffusionPipeline, VAEPipeline

__all__ = [
    "LikelihoodBoundsOutput",
    "VAEModel",
    "VAEOutput",
    "VAEPipeline",
    "get_likelihood",
    "nats_to_bits_per_dim",
]
__all__ += ["HierarchicalVAEModel", "HierarchicalVAEOutput", "HierarchicalVAEPipeline"]
__all__ += ["ClassConditionalDDPMPipeline", "LatentDiffusionPipeline"]
