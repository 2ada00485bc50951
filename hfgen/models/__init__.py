"""hfgen's model classes (diffusers ``ModelMixin`` / ``ConfigMixin``) and the pixel likelihoods they share."""

from .likelihoods import get_likelihood, nats_to_bits_per_dim
from .hvae import HierarchicalVAEModel, HierarchicalVAEOutput
from .vae import LikelihoodBoundsOutput, VAEModel, VAEOutput

__all__ = ["LikelihoodBoundsOutput", "VAEModel", "VAEOutput", "get_likelihood", "nats_to_bits_per_dim"]
__all__ += ["HierarchicalVAEModel", "HierarchicalVAEOutput"]
