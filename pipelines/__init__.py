"""Diffusers pipelines of hfgen (installed as ``hfgen.pipelines``).

The pipeline files import only torch and diffusers, so that a published folder can carry them as remote code;
here, as part of hfgen, their ``from_pretrained`` and ``save_pretrained`` get hfgen's behaviour
(``hfgen.pipeline_hooks``): hfgen's own model classes, and folders that plain diffusers can load too.
"""

from diffusers import DDPMScheduler, UNet2DModel

from ..models import HierarchicalVAEModel, VAEModel
from ..pipeline_hooks import install_hooks
from .pipeline_ddpm_conditional import ClassConditionalDDPMPipeline
from .pipeline_hvae import HierarchicalVAEPipeline
from .pipeline_ldm import LatentDiffusionPipeline
from .pipeline_vae import VAEPipeline

install_hooks(VAEPipeline, {"vae": VAEModel})
install_hooks(HierarchicalVAEPipeline, {"vae": HierarchicalVAEModel})
# diffusers' own classes: the folder carries the pipeline file only
install_hooks(ClassConditionalDDPMPipeline, {"unet": UNet2DModel, "scheduler": DDPMScheduler})
# the first stage is one of two classes: model_index.json names which
install_hooks(LatentDiffusionPipeline, {"vae": (VAEModel, HierarchicalVAEModel), "unet": UNet2DModel,
                                        "scheduler": DDPMScheduler})

__all__ = ["VAEPipeline"]
__all__ += ["HierarchicalVAEPipeline"]
__all__ += ["ClassConditionalDDPMPipeline"]
__all__ += ["LatentDiffusionPipeline"]
