"""``CheckedModelMixin``: diffusers' ``ModelMixin`` for hfgen's models, refusing another class's config and weights.

diffusers reads any ``config.json`` into any model class, keeps the keys the class knows and leaves the weights it
cannot place at random with only warnings: ``VAEModel.from_pretrained(hvae_folder, subfolder="vae")`` returns an
untrained VAE. Every hfgen model is a ``CheckedModelMixin``, whose ``from_pretrained`` and ``from_config`` stop
instead, naming the class the config describes (its ``_class_name``) and the one asked for.
"""

from __future__ import annotations

from diffusers.models.modeling_utils import ModelMixin


class CheckedModelMixin(ModelMixin):
    """``ModelMixin`` whose ``from_pretrained`` / ``from_config`` take only a config of its own class (or one with
    no ``_class_name``)."""

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        found = config_dict.get("_class_name")
        if isinstance(found, str) and found != cls.__name__:
            raise ValueError(f"the config describes a {found}, not a {cls.__name__}; expected a {cls.__name__}'s "
                             f"config and weights (load this one with {found}.from_pretrained, or the folder with "
                             f"its pipeline's from_pretrained)")
        return super().extract_init_dict(config_dict, **kwargs)
