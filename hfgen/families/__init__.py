"""Model families: what each gives the shared training core, evaluator and CLI (see ``base.ModelFamily``)."""

from __future__ import annotations

from ..pipelines import ClassConditionalDDPMPipeline
from .base import Bounds, ModelFamily, Preset
from .ddpm import DDPMFamily
from .hvae import HVAEFamily
from .ldm import LatentDiffusionFamily
from .vae import VAEFamily

#: every family by the name ``hfgen train NAME`` and ``training/train_NAME.py`` give it
FAMILIES: dict[str, type[ModelFamily]] = {
    family.name: family for family in (VAEFamily, HVAEFamily, DDPMFamily, LatentDiffusionFamily)}

#: every family, by the ``_class_name`` its pipeline folders carry in ``model_index.json``
FAMILIES_BY_PIPELINE: dict[str, type[ModelFamily]] = {
    family.pipeline_class.__name__: family for family in FAMILIES.values()
}  # DDPM folders are stock diffusers DDPMPipeline folders
# ... and class-conditional DDPM folders carry hfgen's pipeline file (diffusers' UNet2DModel and DDPMScheduler)
FAMILIES_BY_PIPELINE[ClassConditionalDDPMPipeline.__name__] = DDPMFamily

#: the pipeline class of a ``_class_name`` that is not its family's ``pipeline_class``
_OTHER_PIPELINE_CLASSES = {ClassConditionalDDPMPipeline.__name__: ClassConditionalDDPMPipeline}


def family_for_pipeline_class(class_name: str) -> ModelFamily:
    if class_name not in FAMILIES_BY_PIPELINE:
        raise ValueError(
            f"pipeline class {class_name!r} is not an hfgen pipeline; expected one of {sorted(FAMILIES_BY_PIPELINE)}"
        )
    return FAMILIES_BY_PIPELINE[class_name]()


def load_pipeline(path_or_repo_id: str, device=None, revision: str | None = None):
    """Load an hfgen pipeline folder or Hub repo id (its configs and safetensors weights are downloaded first) and
    return ``(pipeline, family)``. Folders of every hfgen version load, and no code from them runs."""
    from ..remote_code import pipeline_class_name, read_model_index, resolve_folder

    path = resolve_folder(path_or_repo_id, revision)
    index = read_model_index(path)
    class_name = pipeline_class_name(index)
    if class_name == LatentDiffusionFamily.pipeline_class.__name__ and not isinstance(index["_class_name"], list):
        raise ValueError(f"{path_or_repo_id} holds diffusers' own {class_name} (a text-to-image LDM, "
                         f"model_index.json names no pipeline file); hfgen's latent diffusion folders name "
                         f"[\"pipeline_ldm\", \"{class_name}\"]. Load it with diffusers.{class_name}")
    family = family_for_pipeline_class(class_name)
    pipeline_class = _OTHER_PIPELINE_CLASSES.get(class_name, family.pipeline_class)
    pipeline = pipeline_class.from_pretrained(path, use_safetensors=True)
    if device is not None:
        pipeline.to(device)
    family.model_of(pipeline)  # the family takes what it keeps beside the network (a scheduler, a first stage)
    return pipeline, family


__all__ = ["Bounds", "DDPMFamily", "FAMILIES", "FAMILIES_BY_PIPELINE", "HVAEFamily", "LatentDiffusionFamily",
           "ModelFamily", "Preset", "VAEFamily", "family_for_pipeline_class", "load_pipeline"]
