"""Model cards for trained folders (rendered with huggingface_hub's ``ModelCard``)."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .data import FASHION_MNIST, FASHION_MNIST_HUB_ID
from .families.base import ModelFamily

_TITLES = {"vae": "Gaussian VAE"}
_TITLES["ddpm"] = "DDPM"
_TITLES["hvae"] = "hierarchical VAE"


def hub_dataset_id(dataset: str) -> str | None:
    """The Hub id a card's ``datasets`` field should name for a training ``--dataset`` (None for local data)."""
    if dataset == FASHION_MNIST:
        return FASHION_MNIST_HUB_ID
    if dataset.startswith((".", "/", "~")) or os.path.exists(dataset):
        return None
    return dataset


def render_model_card(family: ModelFamily, metrics: dict, model_config: dict, repo_id: str = "OUTPUT_DIR") -> ModelCard:
    """A card for a trained folder: YAML metadata (with a model-index of the likelihood figures) and a body."""
    dataset = metrics.get("dataset", "unknown")
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        pipeline_tag="unconditional-image-generation",
        tags=["hfgen", family.name, "unconditional-image-generation"],
        datasets=[hub_dataset_id(dataset)] if hub_dataset_id(dataset) else None,
    )
    template = resources.files("hfgen.model_cards").joinpath(f"{family.name}.md").read_text()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=f"hfgen {_TITLES.get(family.name, family.name)}",
        family_title=_TITLES.get(family.name, family.name),
        pipeline_class=family.pipeline_class.__name__,
        repo_id=repo_id,
        dataset=dataset,
        split=metrics.get("split", "test"),
        channels=model_config.get("in_channels", metrics.get("channels", "?")),
        sample_size=metrics.get("sample_size", "?"),
        metrics=metrics,
        model_config_json=json.dumps(model_config, indent=2),
    )


def write_model_card(output_dir: str | Path, family: ModelFamily, metrics: dict, model_config: dict) -> Path:
    path = Path(output_dir) / "README.md"
    render_model_card(family, metrics, model_config).save(path)
    return path
