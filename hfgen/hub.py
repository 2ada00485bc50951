"""Model cards and publishing to the Hugging Face Hub.

- ``render_model_card`` / ``write_model_card``: a card (huggingface_hub ``ModelCard`` from the family's template in
  ``hfgen.model_cards``) whose YAML ``model-index`` holds every metric of ``metrics.json``.
- ``record_evaluation``: merge a later ``hfgen evaluate`` into a folder's ``metrics.json`` and re-render its card.
- ``publish_files``: the files of a pipeline folder that are published (an explicit selection: weights as
  safetensors, configs, code, card, sample grid, metrics; never checkpoints, optimizer state, logs, pickles,
  temporary files or tokens).
- ``publish``: ``huggingface_hub.create_repo`` + ``upload_folder`` of exactly those files (``hfgen publish`` and the
  training scripts' ``--push_to_hub``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import EvalResult, ModelCard, ModelCardData, create_branch, create_repo, upload_folder

from .data import FASHION_MNIST, FASHION_MNIST_HUB_ID, LOCAL_DATA_SUFFIX
from .remote_code import component_module_name, pipeline_class_name, read_model_index

if TYPE_CHECKING:  # annotations only: hfgen.families imports the pipelines, whose hooks import this module
    from .families.base import ModelFamily

logger = logging.getLogger("hfgen.hub")

_TITLES = {"vae": "Gaussian VAE", "hvae": "hierarchical VAE", "ddpm": "DDPM", "ldm": "latent diffusion"}

#: metrics.json keys that are evaluation results, in card order: (key, name in the card, what it measures).
#: ``hfgen evaluate`` writes the likelihood bounds; the sample-quality keys appear when they were computed.
METRICS = (
    ("bits_per_dim_elbo", "bits/dim, ELBO bound", "likelihood"),
    ("bits_per_dim_iw", "bits/dim, importance-weighted bound", "likelihood"),
    ("nats_per_image_elbo", "nats/image, ELBO bound", "likelihood"),
    ("nats_per_image_iw", "nats/image, importance-weighted bound", "likelihood"),
    ("fd_fmnist", "Fréchet distance in hfgen's Fashion-MNIST features (not FID)", "sample quality"),
    ("kid_fmnist", "KID in hfgen's Fashion-MNIST features", "sample quality"),
    ("precision", "precision (k-NN manifolds, k=3)", "sample quality"),
    ("recall", "recall (k-NN manifolds, k=3)", "sample quality"),
    ("fd_fmnist_greedy", "Fréchet distance in hfgen's Fashion-MNIST features (not FID), of the greedy chain of pass "
                         "means (not draws)", "sample quality"),
    ("kid_fmnist_greedy", "KID in hfgen's Fashion-MNIST features, of the greedy chain of pass means (not draws)",
     "sample quality"),
)
#: what the images of the plain sample-quality keys were (``metrics.json``'s ``sampled_images``), in a row's name
_SAMPLED = {"draws": "draws from the model", "mean": "the mean of p(x | z) given drawn latents"}
#: families with a single likelihood bound (their ``*_iw`` keys repeat the ``*_elbo`` figures)
_SINGLE_BOUND = {"ddpm": "L_vlb bound", "ldm": "ELBO bound with the diffusion prior's L_vlb"}

#: metrics.json keys that describe a likelihood evaluation (beside the bits_per_dim_* / nats_per_image_* figures)
_BOUND_KEYS = ("num_samples", "importance_samples", "vlb_timesteps", "estimator", "num_dims", "source_shape",
               "sample_shape", "bound_over", "likelihood", "split", "split_size", "unconditional", "bound_terms",
               "bound_terms_given_label")

#: top-level files of a pipeline folder that are published when present
PUBLISHED_FILES = ("model_index.json", "README.md", "samples.png", "metrics.json", "training_config.json")
#: model_index.json keys that hold a pipeline's settings, not components (ClassConditionalDDPMPipeline's class names)
_PIPELINE_SETTINGS = ("class_names",)
#: training settings left out of a card (local paths, run plumbing)
_UNPUBLISHED_SETTINGS = ("output_dir", "resume_from_checkpoint", "report_to", "hub_model_id", "hub_private_repo",
                         "hub_revision", "push_to_hub", "model_config", "family")


def hub_dataset_id(dataset: str) -> str | None:
    """The Hub id a card's ``datasets`` field should name for a training ``--dataset`` (None for local data)."""
    if dataset == FASHION_MNIST:
        return FASHION_MNIST_HUB_ID
    if dataset.endswith(LOCAL_DATA_SUFFIX) or dataset.startswith((".", "/", "~")) or os.path.exists(dataset):
        return None
    return dataset


def card_metrics(family_name: str, metrics: dict) -> list[dict]:
    """The evaluation results of ``metrics.json`` a card reports: ``key``, ``name``, ``value`` and ``stderr``
    (or None). A family with one bound (DDPM's L_vlb) reports it once, under its ``*_elbo`` keys."""
    metrics = conditional_metrics_layout(metrics)
    rows = []
    for key, name, kind in METRICS:
        if key not in metrics or metrics[key] is None:
            continue
        if family_name in _SINGLE_BOUND:
            if key.endswith("_iw"):
                continue
            name = name.replace("ELBO bound", _SINGLE_BOUND[family_name])
        if key.endswith("_iw") and metrics.get("importance_samples"):
            name += f" (K={metrics['importance_samples']})"
        if key.startswith("bits_per_dim") and metrics.get("num_dims"):
            name += f", over {metrics['num_dims']} dims"
        if kind == "sample quality" and metrics.get("sampled_images") in _SAMPLED:
            name += f", of {_SAMPLED[metrics['sampled_images']]}"
        stderr = metrics.get(f"{key}_stderr", metrics.get(f"{key}_std"))
        rows.append({"key": key, "name": name, "kind": kind, "value": float(metrics[key]),
                     "stderr": None if stderr is None else float(stderr)})
    if not any(f"{row['key']}_given_label" in metrics for row in rows):
        return rows
    # a class-conditional model: the plain keys bound log p(x) through its null class; each is followed by the
    # bound given the label, of log p(x | y), under a name that says so
    with_labels = []
    for row in rows:
        with_labels.append(row)
        if row["kind"] != "likelihood":
            continue
        key, name = f"{row['key']}_given_label", row["name"]
        row["name"] += ", of log p(x) (null class)"
        row["unconditional"] = True  # the unconditional model it also is (the card's task)
        if key in metrics:
            stderr = metrics.get(f"{key}_stderr")
            with_labels.append({"key": key, "kind": "likelihood", "name": name + ", of log p(x | y) given the label",
                                "value": float(metrics[key]), "stderr": None if stderr is None else float(stderr)})
    return with_labels


def conditional_metrics_layout(metrics: dict) -> dict:
    """``metrics`` with a class-conditional model's bounds where hfgen files them now: the plain keys bound
    ``-log p(x)`` (the null class) and ``*_given_label`` keys bound ``-log p(x | y)``. Folders written before then
    kept the bounds given the label under the plain keys and the null class's under ``unconditional``; they are
    read the new way (a copy; other metrics are returned as they are)."""
    unconditional = metrics.get("unconditional")
    if not unconditional or (metrics.get("likelihood") or {}).get("given") != "class label":
        return metrics
    given = {key: value for key, value in metrics.items()
             if key.startswith(("bits_per_dim_", "nats_per_image_")) or key == "bound_terms"}
    current = {key: value for key, value in metrics.items() if key not in given and key != "unconditional"}
    for key, value in given.items():
        stem, stderr = (key[: -len("_stderr")], "_stderr") if key.endswith("_stderr") else (key, "")
        current[f"{stem}_given_label{stderr}"] = value
    current.update(unconditional)  # the null class's bounds and likelihood ("given": "nothing (null class)")
    return current


def _split(metrics: dict) -> tuple[str, int | None]:
    """The split a figure was measured on and, for its first N images only, N (``test[:32]``: ``("test", 32)``)."""
    from .evaluation import parse_split_label  # not at the top: hfgen.evaluation imports the families

    return parse_split_label(metrics.get("split", "test"))


def _split_text(metrics: dict) -> str:
    split, count = _split(metrics)
    return f"the first {count} images of the `{split}` split" if count else f"the `{split}` split"


def _tasks(metrics: dict, row: dict) -> tuple[str, str]:
    """The Hub task of a card row: a class-conditional model's figures are of class-conditional generation, but for
    those of its null class (the unconditional model it also is)."""
    if metrics.get("class_names") and not row.get("unconditional"):
        return "class-conditional-image-generation", "Class-conditional image generation"
    return "unconditional-image-generation", "Unconditional image generation"


def _eval_results(family_name: str, metrics: dict, dataset: str) -> list[EvalResult]:
    split, _ = _split(metrics)  # how many images: num_samples in each metric's args
    results = []
    for row in card_metrics(family_name, metrics):
        likelihood = metrics.get("likelihood") or {}
        args = {"num_samples": metrics.get("num_samples"), "importance_samples": metrics.get("importance_samples"),
                "vlb_timesteps": metrics.get("vlb_timesteps"), "num_dims": metrics.get("num_dims"),
                "bound_over": metrics.get("bound_over"), "likelihood": likelihood.get("name"),
                "pixel_values": likelihood.get("data")}
        if row["kind"] == "sample quality":
            args = {"num_generated": metrics.get("num_generated", metrics.get("fd_num_samples"))}
        if row["stderr"] is not None:
            args["stderr"] = row["stderr"]
        task_type, task_name = _tasks(metrics, row)
        results.append(EvalResult(
            task_type=task_type, task_name=task_name,
            dataset_type=hub_dataset_id(dataset) or dataset, dataset_name=dataset, dataset_split=split,
            metric_type=row["key"], metric_name=row["name"], metric_value=row["value"],
            metric_args={k: v for k, v in args.items() if v is not None}))
    return results


def _compute(metrics: dict) -> dict:
    seconds = float(metrics.get("train_seconds", 0.0))
    return {"device": metrics.get("device", "unknown"), "num_processes": metrics.get("num_processes", 1),
            "mixed_precision": metrics.get("mixed_precision", "no"), "hours": seconds / 3600, "minutes": seconds / 60,
            "img_per_s": float(metrics.get("train_img_per_s", 0.0)), "steps": metrics.get("train_steps"),
            "images_seen": metrics.get("images_seen"), "skipped_steps": metrics.get("skipped_steps", 0)}


def render_model_card(family: ModelFamily, metrics: dict, training_config: dict | None = None,
                      repo_id: str | None = None, has_samples: bool = True, model_name: str | None = None) -> ModelCard:
    """A card for a trained folder: YAML metadata with a ``model-index`` of every metric in ``metrics``, and a body
    (sample grid, how to load, metrics table, training configuration, compute, limits) from the family's template.
    ``training_config`` is the folder's ``training_config.json`` (with its ``model_config``); ``repo_id``: the Hub
    repo the card's code loads, or None for the card of a local folder, whose code loads ``"."`` and so runs as
    written inside the folder; ``has_samples``: the folder has the ``samples.png`` grid the card shows;
    ``model_name``: default the repo's name, else ``hfgen-<family>``."""
    metrics = conditional_metrics_layout(metrics)
    training_config = dict(training_config or {})
    model_config = training_config.get("model_config", {})
    metrics = _named_by_sampled_images(family, metrics, model_config)
    dataset = metrics.get("dataset", training_config.get("dataset", "unknown"))
    location = repo_id or "."
    model_name = model_name or (repo_id.rstrip("/").split("/")[-1] if repo_id else f"hfgen-{family.name}")
    conditional = bool(metrics.get("class_names"))
    base_model = training_config.get("vae_repo_id")  # latent diffusion: the VAE it was trained over, if on the Hub
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        # the Hub has no class-conditional pipeline task: a class-conditional model is found by its tag
        pipeline_tag=None if conditional else "unconditional-image-generation",
        tags=["hfgen", family.name,
              "class-conditional-image-generation" if conditional else "unconditional-image-generation"],
        datasets=[hub_dataset_id(dataset)] if hub_dataset_id(dataset) else None,
        base_model=base_model,
        model_name=model_name,
        eval_results=_eval_results(family.name, metrics, dataset) or None,
    )
    settings = {k: v for k, v in sorted(training_config.items()) if k not in _UNPUBLISHED_SETTINGS and v is not None}
    template = resources.files("hfgen.model_cards").joinpath(f"{family.name}.md").read_text()
    pipeline_class = family.pipeline_class.__name__
    bound = {"ddpm": "L_vlb", "ldm": "the ELBO with the diffusion prior's L_vlb"}.get(family.name,
                                                                                    "ELBO and importance-weighted")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        family_title=_TITLES.get(family.name, family.name),
        pipeline_class=pipeline_class,
        repo_id=location,
        local_note=("" if repo_id else
                    "This is the card of a local folder: its code and commands load `\".\"` and run as written inside "
                    "the folder (elsewhere, put the folder's path in place of `.`). Publishing the folder with hfgen "
                    "publish renders the card again with the repo id.\n\n"),
        evaluate_command=_evaluate_command(family.name, metrics, location, dataset),
        num_train_timesteps=model_config.get("num_train_timesteps", 1000),
        first_stage=_first_stage(training_config),
        first_stage_trained_with_prior=bool(training_config.get("train_first_stage")),
        dataset=dataset,
        split=_split(metrics)[0],
        split_text=_split_text(metrics),
        channels=metrics.get("channels", model_config.get("in_channels", "?")),
        sample_size=metrics.get("sample_size", "?"),
        metrics=metrics,
        metric_rows=card_metrics(family.name, metrics),
        compute=_compute(metrics),
        model_config_json=json.dumps(model_config, indent=2, sort_keys=True),
        training_config_json=json.dumps(settings, indent=2),
        has_samples=has_samples,
        grid_images=_grid_text(metrics["grid_images"]),
        pipeline_module=Path(pipeline_class_file(family)).stem if family.name != "ddpm" else "",
        model_module=component_file(family, metrics),
        temperature_example=", temperature=0.8" if "temperature" in family.sampling_options else "",
        metrics_intro=(f"Upper bounds ({bound}) on the negative log-likelihood of the {_pixel_values(metrics)} "
                       f"images ({_split_text(metrics)}), lower is better, and sample-quality figures where "
                       f"they were measured. The same figures are in this card's `model-index` and in `metrics.json`."),
        metrics_note=_metrics_note(family.name, metrics),
        data_description=_data_description(metrics),
        units_note=_units_note(metrics),
        conditional_section=_conditional_section(family, metrics, location),
        class_conditional=bool(metrics.get("class_names")),
        class_names=metrics.get("class_names") or [],
        conditioning_limit=(
            f"it is conditioned on the class label only ({len(metrics['class_names'])} classes: "
            f"{', '.join(metrics['class_names'])}), no text." if metrics.get("class_names")
            else "it has no conditioning (no text, no labels)."),
    )


def _named_by_sampled_images(family: ModelFamily, metrics: dict, model_config: dict) -> dict:
    """``metrics`` with ``grid_images`` (what ``samples.png`` shows). A folder written before ``grid_images`` and
    ``sampled_images`` were recorded sampled a pixel-pass decoder (``pixel_passes`` > 1) by its greedy chain: its
    plain sample-quality figures then move to the ``_greedy`` keys, so that the card never files them as figures of
    draws."""
    from .families.base import GREEDY_SUFFIX

    metrics = dict(metrics)
    before = family.sample_kind(model_config, {})
    if int(model_config.get("pixel_passes", 1)) > 1:
        before = family.sample_kind(model_config, {"greedy_passes": True})
    recorded = "grid_images" in metrics or "sampled_images" in metrics
    metrics.setdefault("grid_images", before)
    if not recorded and before == "greedy":
        for key in _PLAIN_SAMPLE_FIGURES:
            if key in metrics:
                metrics[key + GREEDY_SUFFIX] = metrics.pop(key)
    return metrics


def _grid_text(kind: str) -> str:
    from .families.base import SAMPLED_IMAGES

    return SAMPLED_IMAGES[kind]


#: the sample-quality keys of a folder's images, plain (``_greedy`` added: those of a greedy chain)
_PLAIN_SAMPLE_FIGURES = ("fd_fmnist", "kid_fmnist", "kid_fmnist_std", "precision", "recall")


def _evaluate_command(family_name: str, metrics: dict, location: str, dataset: str) -> str:
    """The ``hfgen evaluate`` command that measures the card's likelihood figures again."""
    split, count = _split(metrics)
    if dataset.endswith(LOCAL_DATA_SUFFIX):
        dataset = f"path/to/{dataset[:-len(LOCAL_DATA_SUFFIX)]}"
    command = f"hfgen evaluate {location} --dataset {dataset} --split {split}"
    if count:
        command += f" --max-samples {count}"
    if family_name in _SINGLE_BOUND:
        k = metrics.get("vlb_timesteps")
        return command + (f" --vlb-timesteps {k}" if k else "")
    k = metrics.get("importance_samples")
    return command + (f" --importance-samples {k}" if k else "")


def _first_stage(training_config: dict) -> str:
    """How a latent diffusion card names the VAE it was trained over: its Hub repo, or its local folder's name."""
    vae, repo_id = training_config.get("vae"), training_config.get("vae_repo_id")
    if repo_id:
        return f"[`{repo_id}`](https://huggingface.co/{repo_id})"
    return f"`{vae}`" if vae else "its own folder"


def _conditional_section(family: ModelFamily, metrics: dict, repo_id: str) -> str:
    """The card's class-conditional section: how to sample a class, what the labels buy, per-class figures."""
    names = metrics.get("class_names")
    if not names:
        return ""
    guidance = ", guidance_scale=2.0" if "guidance_scale" in family.sampling_options else ""
    if family.name == "ldm":  # its card's first snippet swaps in DPM-Solver++, which takes fewer steps than T
        guidance += ", num_inference_steps=20"
    lines = ["", "### Class-conditional", "",
             f"Trained class-conditionally on {len(names)} classes ({', '.join(f'`{n}`' for n in names)}) with label "
             f"dropout: the same weights are the conditional model p(x | y) and, through the null class, the "
             f"unconditional p(x). Sample a class by name or index:", "", "```python",
             f'images = pipe(class_labels=["{names[0]}"] * 8{guidance}, '
             f"generator=torch.Generator().manual_seed(0)).images", "```", "",
             f"or `hfgen sample {repo_id} --class {shlex.quote(names[0])} --num-images 8 --out "
             f"{_file_name(names[0])}.png` (every class, one row each, without `--class`)."]
    lines += ["", "The likelihood figures without a suffix bound -log p(x), through the null class (the model "
              "without a label): the figures to compare with unconditional models. Those `_given_label` bound "
              "-log p(x | y). (The mixture over classes, -log sum_y p(y) p(x | y), is not used: it needs a bound per "
              "class and image, and the log-mean-exp of stochastic bounds is not a bound.)"]
    conditional, unconditional = metrics.get("bits_per_dim_elbo_given_label"), metrics.get("bits_per_dim_elbo")
    if conditional is not None and unconditional is not None:
        gap = unconditional - conditional
        lines += ["", f"The label lowers the ELBO bound by {gap:.4f} bits/dim ({gap * metrics.get('num_dims', 0):.1f} "
                  f"bits per image). The exact log-likelihoods can differ by at most log2({len(names)}) = "
                  f"{math.log2(len(names)):.2f} bits per image (log p(x | y) - log p(x) = log p(y | x) - log p(y)), so "
                  f"any larger gap is a difference in how tight the two bounds are, not information in the label."]
    classes = metrics.get("classes")
    if classes:
        lines += ["", f"Generated images per class ({classes['samples_per_class']} each, "
                  f"{_sampling_text(classes.get('sampling', {}))}) against the `{classes.get('reference_split', '?')}` "
                  f"images of that class, in hfgen's Fashion-MNIST classifier (accuracy on the real images of the "
                  f"split: {classes['classifier_accuracy_on_real']:.3f}):", "",
                  "| class | accuracy of generated | fd_fmnist | unconditional samples classified as it |",
                  "|---|---|---|---|"]
        histogram = classes.get("null_class_histogram", {})
        for name, entry in classes["per_class"].items():
            lines.append(f"| {name} | {entry['accuracy']:.3f} | {entry['fd_fmnist']:.2f} | "
                         f"{histogram.get(name, float('nan')):.3f} |")
        lines.append(f"| all | {classes['class_accuracy']:.3f} | {classes['fd_fmnist_class_mean']:.2f} (mean) | |")
    return "\n".join(lines) + "\n"


def _file_name(class_name: str) -> str:
    """A class name as a file name: ``T-shirt/top`` -> ``t-shirt-top``."""
    return re.sub(r"[^a-z0-9]+", "-", class_name.lower()).strip("-") or "class"


def _sampling_text(sampling: dict) -> str:
    options = {key: value for key, value in sampling.items() if key != "seed"}
    return ", ".join(f"{key} {value}" for key, value in options.items()) or "default sampler"


def _pixel_values(metrics: dict) -> str:
    """``8-bit`` or ``dynamically binarized``: what the likelihood is of (older metrics.json: from the family)."""
    return (metrics.get("likelihood") or {}).get("data", "8-bit")


def _shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def _data_description(metrics: dict) -> str:
    source, sample = metrics.get("source_shape"), metrics.get("sample_shape")
    if not source or not sample:
        size = metrics.get("sample_size", "?")
        return f"{metrics.get('channels', '?')}x{size}x{size} images, {_pixel_values(metrics)}"
    if source == sample:
        return f"{_shape_text(source)} images, {_pixel_values(metrics)}"
    return f"{_shape_text(source)} images zero-padded to {_shape_text(sample)}, {_pixel_values(metrics)}"


def _units_note(metrics: dict) -> str:
    """What the bits/dim divide by and what the bound is of, from the fields ``hfgen.evaluation`` writes."""
    if not metrics.get("bound_over"):
        return ("Bits/dim divide by every pixel of the padded square the model sees (this folder's metrics predate "
                "hfgen's units fix): re-run `hfgen evaluate --write-metrics` for figures over the data's own pixels.")
    dims = metrics["num_dims"]
    text = f"Bits/dim divide nats/image by {dims} x ln 2: the {_shape_text(metrics['source_shape'])} pixels of the data's own images"
    if metrics["bound_over"] == "source image":
        text += (", and the bound is one on those images (the model scores only them; any zero padding the model "
                 "sees is a fixed function of the image).")
    elif metrics["bound_over"] == "padded image":
        text += (f". The bound is that of the padded {_shape_text(metrics['sample_shape'])} image, still an upper "
                 f"bound on -log p of the unpadded one (p(image) >= p(image, border = 0)).")
    else:
        text += "."
    if _pixel_values(metrics) != "8-bit":
        text += " The data were dynamically binarized: these are binarized-data figures, not 8-bit ones."
    return text


def pipeline_class_file(family: ModelFamily) -> str:
    import inspect

    return inspect.getsourcefile(family.pipeline_class)


def component_file(family: ModelFamily, metrics: dict | None = None) -> str:
    """``modeling_vae.py``: the model code file a family's published component folder carries ("" for DDPM). Where
    the component is one of several classes (a latent diffusion's first stage), the one ``metrics["likelihood"]``
    names as ``first_stage``."""
    components = getattr(family.pipeline_class, "_hfgen_components", {})
    named = ((metrics or {}).get("likelihood") or {}).get("first_stage")
    files = []
    for classes in components.values():
        classes = classes if isinstance(classes, tuple) else (classes,)
        model_class = next((cls for cls in classes if cls.__name__ == named), classes[0])
        if model_class.__module__.split(".")[0] != "diffusers":
            files.append(f"{component_module_name(model_class)}.py")
    return "".join(files)


def _metrics_note(family_name: str, metrics: dict) -> str:
    count, split = metrics.get("num_samples"), _split(metrics)[0]
    if count is None:
        return ""
    if family_name == "ldm":
        k = metrics.get("vlb_timesteps", metrics.get("importance_samples"))
        return (f"Likelihood measured on {count} images (`{split}`) with one posterior sample z per image and {k} "
                f"stratified timesteps of the prior's L_vlb (± is the standard error over images, both samplings "
                f"included).")
    if family_name in _SINGLE_BOUND:
        k = metrics.get("vlb_timesteps", metrics.get("importance_samples"))
        return (f"Likelihood measured on {count} images (`{split}`) with {k} timesteps per image (± is the standard "
                f"error over images, timestep sampling included).")
    k = metrics.get("importance_samples")
    return (f"Likelihood measured on {count} images (`{split}`) with K={k} importance samples per image (± is the "
            f"standard error over images).")


def write_model_card(output_dir: str | Path, family: ModelFamily, metrics: dict, training_config: dict | None = None,
                     repo_id: str | None = None) -> Path:
    """Render the card of a trained folder into ``output_dir/README.md`` (``repo_id``: the Hub repo the card tells
    users to load; None: the folder itself, as ``"."``, never its absolute path, since the card is published). The
    card's model name is the repo's name, else the folder's."""
    path = Path(output_dir) / "README.md"
    has_samples = (Path(output_dir) / "samples.png").is_file()
    render_model_card(family, metrics, training_config, repo_id, has_samples,
                      model_name=None if repo_id else Path(output_dir).resolve().name).save(path)
    return path


def refresh_model_card(folder: str | Path, repo_id: str | None = None) -> bool:
    """Re-render a trained folder's card from its ``metrics.json`` so that it names ``repo_id`` (default: the Hub
    repo its training run pushed to, else the folder itself, as ``"."``); False (card left as is) when the folder has no
    ``metrics.json`` to render from."""
    from .families import family_for_pipeline_class

    folder = Path(folder)
    if not (folder / "metrics.json").is_file():
        return False
    metrics = json.loads((folder / "metrics.json").read_text())
    config_path = folder / "training_config.json"
    training_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if repo_id is None and training_config.get("push_to_hub"):
        repo_id = training_config.get("hub_model_id")
    family = family_for_pipeline_class(pipeline_class_name(read_model_index(folder)))
    write_model_card(folder, family, metrics, training_config, repo_id)
    return True


def record_evaluation(folder: str | Path, evaluation: dict) -> dict:
    """Merge the figures of a later evaluation (what ``hfgen evaluate`` prints) into a trained folder's
    ``metrics.json`` and re-render its card, so that ``hfgen publish`` shows them; returns the merged metrics.

    A likelihood evaluation holds every bound key ``hfgen.evaluation.summarize_bounds`` writes, so it replaces the
    old bound as a whole (a K=1000 bound on the whole split never sits beside the ELBO of the 1,000 images training
    ended with); sample-quality keys replace their namesakes; the training figures (steps, time, images/s,
    diagnostics) stay. Both files are written only after the evaluation succeeded; ``metrics.json`` atomically."""
    from .families import family_for_pipeline_class
    from .files import write_json_atomically

    folder = Path(folder)
    family = family_for_pipeline_class(pipeline_class_name(read_model_index(folder)))  # refuses a non-folder
    if evaluation.get("family", family.name) != family.name:
        raise ValueError(f"the evaluation is of a {evaluation['family']!r} model but {folder} holds a "
                         f"{family.name!r} pipeline")
    path = folder / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if "bits_per_dim_elbo" in evaluation:  # a new likelihood evaluation: no old bound key or label survives it
        metrics = {key: value for key, value in metrics.items() if key not in _BOUND_KEYS
                   and not key.startswith(("bits_per_dim_", "nats_per_image_"))}
    metrics.update(evaluation)
    write_json_atomically(path, metrics)
    refresh_model_card(folder)
    return metrics


# ---------------------------------------------------------------------------------------------- publishing
def publish_files(folder: str | Path, include_logs: bool = False) -> list[str]:
    """The files of pipeline folder ``folder`` that ``publish`` uploads, as sorted paths relative to it.

    Top level: ``model_index.json``, the card ``README.md``, ``samples.png``, ``metrics.json``,
    ``training_config.json`` (when present) and the pipeline code file ``model_index.json`` names. In each
    component folder that ``model_index.json`` names: ``*.json`` configs, ``*.safetensors`` weights and the
    component's code file. ``include_logs`` adds the tensorboard event files under ``logs/``. Nothing else: no
    checkpoints (they hold optimizer state and pickled random states), no ``*.bin``/``*.pt``/``*.pth`` or other
    pickles, no intermediate sample grids, temporary or hidden files. Raises when the folder cannot load: no
    ``model_index.json``, a component without safetensors weights, or an hfgen pipeline without its code files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; expected a pipeline folder written by an hfgen "
                                f"training script (with model_index.json)")
    index = read_model_index(folder)
    files = [name for name in PUBLISHED_FILES if (folder / name).is_file()]
    class_name = index.get("_class_name")
    if isinstance(class_name, (list, tuple)):
        files.append(_required(folder, f"{class_name[0]}.py", "the pipeline code model_index.json names"))
    elif class_name in ("VAEPipeline", "HierarchicalVAEPipeline"):
        raise ValueError(
            f"{folder} was written before hfgen folders carried their code, so plain diffusers could not load it "
            f"from the Hub; save it again in the current layout first:\n  python -c \"from hfgen import {class_name}; "
            f"p = {class_name}.from_pretrained('{folder}'); p.save_pretrained('{folder}')\"")
    for component, value in sorted(index.items()):
        if (component.startswith("_") or component in _PIPELINE_SETTINGS or not isinstance(value, (list, tuple))
                or value[0] is None):
            continue
        sub = folder / component
        if not sub.is_dir():
            raise FileNotFoundError(f"{sub} is missing; model_index.json names the component {component!r}")
        entries = sorted(path.name for path in sub.iterdir() if path.is_file() and not path.name.startswith("."))
        weights = [name for name in entries if name.endswith(".safetensors")]
        if (sub / "config.json").is_file() and not weights:
            raise FileNotFoundError(f"{sub} has no .safetensors weights; hfgen publishes weights only as safetensors "
                                    f"(save_pretrained writes them)")
        files += [f"{component}/{name}" for name in entries
                  if name.endswith((".json", ".safetensors")) or name == f"{value[0]}.py"]
    if include_logs and (folder / "logs").is_dir():
        files += sorted(path.relative_to(folder).as_posix() for path in (folder / "logs").rglob("events.out.tfevents.*")
                        if path.is_file())
    return sorted(set(files))


def _required(folder: Path, name: str, what: str) -> str:
    if not (folder / name).is_file():
        raise FileNotFoundError(f"{folder / name} is missing: {what}")
    return name


def publish(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            commit_message: str | None = None, token: str | None = None, include_logs: bool = False,
            refresh_card: bool = True):
    """Upload the files ``publish_files`` selects to the Hub model repo ``repo_id`` (created if needed; ``private``
    applies to a new repo) on branch ``revision`` (created from main if needed; default main). The card is first
    re-rendered so that it names ``repo_id``. The token is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``)
    unless given. Returns the ``CommitInfo`` of the upload."""
    folder = Path(folder)
    files = publish_files(folder, include_logs=include_logs)  # refuse a bad folder before touching the Hub
    repo = create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
    repo_id = getattr(repo, "repo_id", None) or repo_id  # the full id when a bare name was given
    if revision and revision != "main":
        create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
    # the card is re-rendered once the Hub has answered: an offline or refused publish leaves the folder as it was
    if refresh_card and refresh_model_card(folder, repo_id) and "README.md" not in files:
        files = sorted(files + ["README.md"])
    message = commit_message or f"Upload {pipeline_class_name(read_model_index(folder))} from hfgen"
    return upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files, commit_message=message,
                         revision=revision, repo_type="model", token=token)
