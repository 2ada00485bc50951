"""The ``hfgen`` command: sample from, evaluate and publish trained pipeline folders.

    hfgen sample DIR --num-images 64 --seed 0 --out grid.png [--temperature 0.8]
    hfgen sample DDPM_DIR --scheduler ddim|dpm-solver++|ddpm --steps 50
    hfgen sample DIR --class sneaker [--class 0 ...] [--guidance-scale 2]   (a class-conditional model: one row
                                                                             per class; every class without --class)
    hfgen evaluate DIR --dataset fashion_mnist --split test [--max-samples N] [--importance-samples K]
                       [--progress-file F]   (resumable: run the same command again after a stop)
                       [--write-metrics]     (record the figures in DIR/metrics.json and its model card)
    hfgen evaluate DIR --metrics bpd,fd,kid,pr --num-samples N [--batch-size B] [--scheduler S --steps K]
    hfgen evaluate DIR --metrics bpd,classes [--samples-per-class N] [--guidance-scale S]   (class-conditional:
                       bounds of log p(x|y) and log p(x), per-class fd_fmnist and class accuracy of samples)
    hfgen publish DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--commit-message M] [--dry-run]

``evaluate`` prints one JSON object on stdout (progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    import torch

# torch, diffusers and the rest of hfgen are imported by the commands that need them, so that the parser (and
# `hfgen --help`) starts in a fraction of a second


def _device(name: str | None):
    """The ``--device`` to compute on (default: cuda if available, else cpu), refused in one line when this
    machine has no such device."""
    import torch

    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device name; expected cpu, cuda or cuda:N (or mps, xpu)") from None
    if device.type == "cpu":
        return device
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"--device {name}: this machine has no {device.type} device that torch {torch.__version__} "
                         f"can use; expected cpu (or leave --device out: cuda when there is one, else cpu)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if (device.index or 0) >= count:
        raise ValueError(f"--device {name}: this machine has {count} {device.type} device(s); expected "
                         f"{device.type}:0 to {device.type}:{count - 1}")
    return device


def _image_file(text: str) -> Path:
    """``--out``: a file name whose extension names an image format PIL writes (checked before any sampling)."""
    from PIL import Image

    path = Path(text)
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {text!r}: {'no' if not path.suffix else 'an unknown'} image file extension; "
                         f"expected a file name ending in .png (or .jpg, .webp, ...)")
    return path


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from diffusers.utils import make_image_grid

    out = _image_file(args.out)
    device = _device(args.device)
    from .families import load_pipeline

    pipeline, family = load_pipeline(args.model, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = _sampling_options(args, family)
    rows_of_classes = _grid_classes(args.classes, family, pipeline)
    if rows_of_classes is None:
        images = family.sample_images(pipeline, args.num_images, generator, crop_to_source=args.crop_to_source,
                                      **options)
        cols = args.cols or int(math.ceil(math.sqrt(len(images))))
    else:  # one row per class
        cols = args.cols or max(1, args.num_images // len(rows_of_classes))
        labels = [label for label in rows_of_classes for _ in range(cols)]
        images = family.sample_images(pipeline, len(labels), generator, class_labels=labels,
                                      crop_to_source=args.crop_to_source, **options)
        options["classes"] = rows_of_classes
    rows = int(math.ceil(len(images) / cols))
    blank = images[0].copy().point(lambda _: 0)
    grid = make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(json.dumps({"out": str(out), "num_images": len(images), "seed": args.seed, **options}))
    return 0


def _grid_classes(classes: list[str] | None, family, pipeline) -> list[str | int] | None:
    """The class of each grid row: the ``--class`` values (names, or indices given as digits), every class of a
    class-conditional model when none is named, or None (an unconditional grid)."""
    num_classes = family.num_classes(family.model_of(pipeline))
    if not classes:
        return list(family.class_names(pipeline) or range(num_classes)) or None
    if not num_classes:
        raise ValueError(f"--class {' '.join(classes)}: this model was trained without class labels; train it with "
                         f"--class_conditional to sample a given class")
    names = family.class_names(pipeline) or []
    return [int(value) if value.isdigit() and value not in names else value for value in classes]


EVALUATE_METRICS = ("bpd", "fd", "kid", "pr", "classes")


def _parse_metrics(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVALUATE_METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: expected a comma-separated list of {', '.join(EVALUATE_METRICS)}")
    return names


def _sampling_options(args: argparse.Namespace, family) -> dict:
    """Sampling options given on the command line, checked against the ones the family's sampler takes
    (``ModelFamily.sampling_options``: ``temperature`` for the VAEs; ``scheduler``, ``steps``, ``clip_sample``,
    ``timestep_spacing`` and, for a class-conditional model, ``guidance_scale`` and ``guidance_rescale`` for
    DDPM)."""
    given = {"temperature": args.temperature, "scheduler": args.scheduler, "steps": args.steps,
             "clip_sample": args.clip_sample, "timestep_spacing": args.timestep_spacing,
             "guidance_scale": args.guidance_scale, "guidance_rescale": args.guidance_rescale,
             "first_stage_guidance_scale": args.first_stage_guidance_scale,
             "greedy_passes": args.greedy_passes or None}
    options = {key: value for key, value in given.items() if value is not None}
    refused = [_flag(key) for key in options if key not in family.sampling_options]
    if refused:
        raise ValueError(f"the {family.name} family's sampler does not take {', '.join(refused)}; it takes "
                         f"{', '.join(_flag(key) for key in family.sampling_options)}")
    return options


def _flag(option: str) -> str:
    """The command-line flag of a sampling option: ``clip_sample`` -> ``--clip-sample``."""
    return "--" + option.replace("_", "-")


def _sample_quality(args, pipeline, family, model, names: list[str], images) -> dict:
    from .data import public_dataset_name
    from .metrics import (evaluate_samples, inception_reference_statistics, load_feature_net, load_inception,
                          reference_statistics)

    if args.inception_weights and "fd" not in names:
        raise ValueError(f"--inception-weights {args.inception_weights} adds fid_inception to the fd metric; "
                         f"ask for it with --metrics fd (got --metrics {args.metrics})")
    options = _sampling_options(args, family)
    channels, sample_size = family.image_shape(model)
    split = dict(sample_size=sample_size, channels=channels,
                 resize_mode=args.resize_mode, convert_channels=args.convert_channels,
                 max_samples=args.max_samples or None, images=images, config_name=args.dataset_config_name,
                 image_column=args.image_column)
    inception_net = inception_reference = None
    if args.inception_weights:  # checked before any sampling: a wrong path or file fails at once
        inception_net = load_inception(args.inception_weights, pipeline.device)
        inception_reference = inception_reference_statistics(args.inception_weights, args.dataset, args.split,
                                                             net=inception_net, **split)
    labels = None
    if args.class_balanced:  # ancestral samples of p(x) = sum_y p(y) p(x | y), y uniform over the classes
        num_classes = family.num_classes(model)
        if not num_classes:
            raise ValueError("--class-balanced samples each class of a class-conditional model in turn; this model "
                             "was trained without class labels")
        labels = [index % num_classes for index in range(args.num_samples)]
    net = load_feature_net("fmnist", pipeline.device)
    reference = reference_statistics(args.dataset, args.split, net=net, **split)
    figures = evaluate_samples(family, pipeline, reference, num_samples=args.num_samples, metrics=names,
                               batch_size=args.batch_size, seed=args.seed, net=net, inception_net=inception_net,
                               inception_reference=inception_reference, class_labels=labels, **options)
    figures["sampling"] = {"seed": args.seed, "batch_size": args.batch_size, **options,
                           "classes": "balanced (y = i mod K)" if labels else "null class (unconditional)"
                           if family.num_classes(model) else "none (unconditional model)"}
    figures["reference"] = {"dataset": public_dataset_name(args.dataset), "split": args.split,
                            "from_cache": reference.from_cache}
    if inception_reference is not None:
        figures["reference"]["inception_weights"] = str(args.inception_weights)
        figures["reference"]["inception_from_cache"] = inception_reference.from_cache
    return figures


def _split_labels(args, family, pipeline, dataset) -> tuple[torch.Tensor, list[str]]:
    """The class index of each evaluated image and the split's class names, checked against the classes the model
    was trained on."""
    from .data import class_labels

    labels, names = class_labels(dataset, args.label_column, max_samples=args.max_samples or None)
    trained = family.class_names(pipeline)
    if trained and names != trained:
        raise ValueError(f"the {args.split!r} split declares the classes {names}; the model was trained on {trained}")
    return labels, names


def _null_class_progress_file(path: str | None) -> str | None:
    if not path:
        return None
    path = Path(path)
    return str(path.with_name(path.stem + "-null-class" + path.suffix))


def _class_quality(args, pipeline, family, images, labels, names, split_size: int) -> dict:
    """Per-class fd_fmnist and class accuracy of generated images (``hfgen.metrics.class_conditional``) against the
    split's ``images`` of each class."""
    from .evaluation import split_label
    from .metrics import load_feature_net
    from .metrics.class_conditional import class_conditional_quality

    net = load_feature_net("fmnist", pipeline.device)
    options = _sampling_options(args, family)
    figures = class_conditional_quality(family, pipeline, net, images, labels, names,
                                        samples_per_class=args.samples_per_class, batch_size=args.batch_size,
                                        seed=args.seed, **options)
    figures["sampling"] = {"seed": args.seed, **options}
    figures["reference_split"] = split_label(args.split, images.shape[0], split_size)
    return figures


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .data import images_and_source_shape, load_image_dataset, public_dataset_name
    from .evaluation import evaluate_likelihood, given_label_figures, split_label

    requested = _parse_metrics(args.metrics)
    if "kid" in requested:
        from .metrics.kid import KID_MIN_SAMPLES, KID_SUBSET_SIZE

        if args.num_samples < KID_MIN_SAMPLES:
            raise ValueError(f"--num-samples {args.num_samples} with --metrics kid: kid_fmnist averages subsets of "
                             f"{KID_SUBSET_SIZE} generated images, and its std needs subsets that differ; expected "
                             f"--num-samples {KID_MIN_SAMPLES} or more (default 10000), or --metrics fd,pr")
    if args.write_metrics and not Path(args.model).is_dir():
        raise ValueError(f"--write-metrics writes into a local pipeline folder, and {args.model!r} is not one; "
                         f"evaluate a downloaded folder to record its figures")
    device = _device(args.device)
    from .families import DDPMFamily, load_pipeline

    pipeline, family = load_pipeline(args.model, device)
    model = family.model_of(pipeline)
    if args.vlb_timesteps and not isinstance(family, DDPMFamily):
        raise ValueError(f"--vlb-timesteps {args.vlb_timesteps}: the {family.name} family has no L_vlb timesteps; "
                         f"expected --importance-samples K for its importance-weighted bound (--vlb-timesteps is "
                         f"for the diffusion families, ddpm and ldm)")
    metrics, images = {}, None
    conditional = bool(family.num_classes(model))
    if "classes" in requested and not conditional:
        raise ValueError("--metrics classes needs a class-conditional model (trained with --class_conditional)")
    if "bpd" in requested or "classes" in requested:  # the split's images (and labels) once, for both
        dataset = load_image_dataset(args.dataset, args.split, config_name=args.dataset_config_name,
                                     image_column=args.image_column)
        channels, sample_size = family.image_shape(model)
        images, source_shape = images_and_source_shape(
            dataset, sample_size=sample_size, channels=channels,
            resize_mode=args.resize_mode, convert_channels=args.convert_channels,
            max_samples=args.max_samples or None, description=f"{args.split} images")
        labels, names = _split_labels(args, family, pipeline, dataset) if conditional else (None, None)
    if "bpd" in requested:
        model.eval().to(memory_format=torch.channels_last)
        # the family's default K unless one was asked for: 16 timesteps for the diffusions, whose one-timestep
        # estimate mostly lands below L_vlb (hfgen.families.ddpm)
        samples = args.vlb_timesteps or args.importance_samples or family.default_importance_samples
        print(f"hfgen evaluate: {family.bound_estimator(model, samples)}", file=sys.stderr)
        # the plain keys bound -log p(x): a class-conditional model's null class (the model without a label);
        # given the labels, bounds on -log p(x | y) under names that say so (bits_per_dim_elbo_given_label)
        metrics = evaluate_likelihood(
            family, model, images, importance_samples=samples, batch_size=args.batch_size, seed=args.seed,
            source_shape=source_shape,
            progress_file=_null_class_progress_file(args.progress_file) if conditional else args.progress_file)
        if conditional:
            metrics.update(given_label_figures(evaluate_likelihood(
                family, model, images, importance_samples=samples, batch_size=args.batch_size, seed=args.seed,
                progress_file=args.progress_file, source_shape=source_shape, class_labels=labels)))
        metrics.update({"split": split_label(args.split, metrics["num_samples"], len(dataset)),
                        "split_size": len(dataset)})
    quality = [name for name in requested if name not in ("bpd", "classes")]
    if quality:
        model.eval()
        metrics.update(_sample_quality(args, pipeline, family, model, quality, images))
    if "classes" in requested:
        model.eval()
        metrics["classes"] = _class_quality(args, pipeline, family, images, labels, names, len(dataset))
    # "split" labels the likelihood figures only; sample quality names its reference split under "reference"
    metrics.update({"dataset": public_dataset_name(args.dataset), "family": family.name})
    if args.write_metrics:
        from .hub import record_evaluation

        record_evaluation(args.model, metrics)
    print(json.dumps(metrics))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .hub import publish, publish_files

    files = publish_files(args.folder, include_logs=args.include_logs)
    summary = {"folder": args.folder, "repo_id": args.repo_id, "revision": args.revision or "main",
               "private": args.private, "files": files}
    if args.dry_run:
        print(json.dumps({**summary, "dry_run": True}, indent=2))
        return 0
    from huggingface_hub.errors import HfHubHTTPError

    try:
        commit = publish(args.folder, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, include_logs=args.include_logs)
    except HfHubHTTPError as error:
        raise ValueError(f"the Hub refused to publish to {args.repo_id!r}: {str(error).splitlines()[0]}; expected a "
                         f"token with write access to it (HF_TOKEN or `hf auth login`)") from None
    except _connection_errors() as error:
        raise ValueError(f"could not reach the Hub to publish to {args.repo_id!r} ({type(error).__name__}: "
                         f"{(str(error).splitlines() or [''])[0]}); expected a network connection to the Hub (and "
                         f"HF_HUB_OFFLINE unset); no commit was made") from None
    print(json.dumps({**summary, "commit_url": getattr(commit, "commit_url", None)}, indent=2))
    return 0


TEMPERATURE_HELP = ("prior temperature: of every latent group (VAE families), of the groups below the diffused ones "
                    "(latent diffusion over a hierarchical VAE)")
GREEDY_PASSES_HELP = ("a VAE whose p(x | z) is decoded in pixel passes: instead of draws from the model, the greedy "
                      "chain (each pass the mean given the earlier passes' rounded means; neither E[x | z] nor a draw)")


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions huggingface_hub lets through when the Hub cannot be reached: its offline mode, and the
    transport errors (connection, timeout) of the HTTP client it uses (httpx2, httpx or requests, by version)."""
    import importlib

    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(found, name) for name in names if hasattr(found, name)]
    return tuple(errors)


FIRST_STAGE_GUIDANCE_HELP = ("a latent diffusion over a class-conditional hierarchical VAE: the guidance scale of the "
                             "hierarchical VAE's lower groups (default: --guidance-scale's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfgen", description="Sample from, evaluate and publish hfgen models.")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="write a grid of samples to a PNG file")
    sample.add_argument("model", help="a pipeline folder written by an hfgen training script, or a Hub repo id")
    sample.add_argument("--num-images", type=int, default=64,
                        help="images in the grid (a class-conditional model: shared evenly among its class rows)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampler's generator (same seed, same grid)")
    sample.add_argument("--out", default="samples.png", help="the PNG file to write")
    sample.add_argument("--temperature", type=float, default=None, help=TEMPERATURE_HELP)
    sample.add_argument("--greedy-passes", action="store_true", help=GREEDY_PASSES_HELP)
    sample.add_argument("--scheduler", choices=("ddpm", "ddim", "dpm-solver++"), default=None,
                        help="sampler for the trained network (DDPM family; default: the folder's own)")
    sample.add_argument("--steps", type=int, default=None,
                        help="sampling steps (DDPM family; default: T for ddpm, 50 for ddim and dpm-solver++)")
    sample.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                        help="clip every x_0 prediction to [-1, 1] (DDPM family; default: the sampler's)")
    sample.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                        help="where the sampler's steps fall among the T timesteps (DDPM family)")
    sample.add_argument("--crop-to-source", action=argparse.BooleanOptionalAction, default=True,
                        help="images at the data's own size, as training saw them before padding (28x28 for "
                             "Fashion-MNIST; the default), or with --no-crop-to-source the padded square the model "
                             "generates (32x32)")
    sample.add_argument("--class", dest="classes", action="append", default=None, metavar="CLASS",
                        help="a class-conditional model: a row of this class (a name, e.g. sneaker, or an index); "
                             "repeat for more rows (default: one row per class)")
    sample.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale of a class-conditional DDPM, latent diffusion or "
                             "hierarchical VAE (1: the conditional model, 0: the unconditional one, above 1: guided)")
    sample.add_argument("--first-stage-guidance-scale", type=float, default=None, help=FIRST_STAGE_GUIDANCE_HELP)
    sample.add_argument("--guidance-rescale", type=float, default=None,
                        help="0..1: scale the guided prediction back to the conditional one's spread against the "
                             "over-brightening of large guidance scales (Lin et al. 2023; default 0)")
    sample.add_argument("--cols", type=int, default=None,
                        help="grid columns (default: a square grid; a class grid: --num-images / classes)")
    sample.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("evaluate", help="likelihood bounds and sample quality on a data set split, as JSON")
    evaluate.add_argument("model", help="a pipeline folder written by an hfgen training script, or a Hub repo id")
    evaluate.add_argument("--dataset", default="fashion_mnist",
                          help="the data to score, as the training scripts' --dataset: 'fashion_mnist', a Hub dataset "
                               "id, a folder of images, or a folder of parquet/arrow files")
    evaluate.add_argument("--dataset-config-name", default=None, help="the Hub data set's configuration name")
    evaluate.add_argument("--image-column", default=None,
                          help="the column of images (default: 'image', else 'img', else the first column of images)")
    evaluate.add_argument("--split", default="test",
                          help="the split to score (fashion_mnist: test, validation or train; bounds are reported "
                               "on test, choices are made on validation)")
    evaluate.add_argument("--max-samples", type=int, default=0,
                          help="evaluate the first N images (0: all); also the reference images of fd, kid and pr")
    evaluate.add_argument("--importance-samples", type=int, default=None,
                          help="K of the importance-weighted bound (default 1: the ELBO only); DDPM and latent "
                               "diffusion: L_vlb timesteps")
    evaluate.add_argument("--vlb-timesteps", type=int, default=None,
                          help="DDPM and latent diffusion: stratified timesteps per image of L_vlb (default 16; "
                               "T - 1 or more: every term summed)")
    evaluate.add_argument("--batch-size", type=int, default=256, help="images per forward pass (bounds memory)")
    evaluate.add_argument("--progress-file", default=None,
                          help="save the likelihood sums after every batch to this JSON file and resume from it "
                               "when run again: a long evaluation (e.g. K=1000) survives being stopped")
    evaluate.add_argument("--write-metrics", action="store_true",
                          help="also merge the figures into the folder's metrics.json and re-render its model card "
                               "(README.md), so that `hfgen publish` shows them (a local folder only)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the posterior samples, timesteps and generated images (same seed, same figures)")
    evaluate.add_argument("--resize-mode", choices=("auto", "pad", "resize"), default="auto",
                          help="images of another size than the model's: as the training scripts' --resize_mode")
    evaluate.add_argument("--convert-channels", action="store_true",
                          help="convert images with other channels to the model's (as the training scripts' "
                               "--convert_channels); default: refuse them")
    evaluate.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    evaluate.add_argument("--metrics", default="bpd",
                          help="comma-separated: bpd (likelihood bounds; of log p(x|y) and log p(x) for a "
                               "class-conditional model), fd (fd_fmnist), kid (kid_fmnist), pr (precision/recall), "
                               "classes (per-class fd_fmnist and class accuracy of generated images); fd, kid, pr and "
                               "classes compare generated images with the split")
    evaluate.add_argument("--num-samples", type=int, default=10000, help="images to generate for fd, kid and pr")
    evaluate.add_argument("--label-column", default=None,
                          help="a class-conditional model: the split's label column (default: its ClassLabel column)")
    evaluate.add_argument("--samples-per-class", type=int, default=200,
                          help="--metrics classes: images generated per class (and for the null-class histogram)")
    evaluate.add_argument("--guidance-scale", type=float, default=None,
                          help="classifier-free guidance scale of a class-conditional DDPM's, latent diffusion's or "
                               "hierarchical VAE's samples")
    evaluate.add_argument("--first-stage-guidance-scale", type=float, default=None, help=FIRST_STAGE_GUIDANCE_HELP)
    evaluate.add_argument("--guidance-rescale", type=float, default=None,
                          help="0..1: guidance rescale of a class-conditional DDPM's samples (Lin et al. 2023)")
    evaluate.add_argument("--class-balanced", action="store_true",
                          help="a class-conditional model: generate the fd/kid/pr images class by class in equal numbers "
                               "(ancestral samples of p(x) with y uniform, as conditional models' FIDs are measured) "
                               "instead of from the null class")
    evaluate.add_argument("--temperature", type=float, default=None, help=TEMPERATURE_HELP)
    evaluate.add_argument("--greedy-passes", action="store_true",
                          help=GREEDY_PASSES_HELP + "; its figures get keys of their own (fd_fmnist_greedy, ...)")
    evaluate.add_argument("--scheduler", default=None, help="sampling scheduler (families that have one)")
    evaluate.add_argument("--steps", type=int, default=None, help="sampling steps (families that take them)")
    evaluate.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                          help="clip every x_0 prediction to [-1, 1] (DDPM family; default: the sampler's)")
    evaluate.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                          help="where the sampler's steps fall among the T timesteps (DDPM family)")
    evaluate.add_argument("--inception-weights", default=None,
                          help="a local FID Inception-v3 weight file (pytorch-fid's pt_inception-2015-12-05-*.pth, or a "
                               ".safetensors of the same state dict): adds fid_inception to --metrics fd "
                               "(never downloaded)")
    evaluate.set_defaults(func=cmd_evaluate)

    sub.add_parser("train", help="train a model: hfgen train vae|hvae|ddpm|ldm [flags] (the flags of "
                                 "training/train_<family>.py; hfgen train --help lists the families, hfgen train vae "
                                 "--help a family's flags)", add_help=False)
    publish = sub.add_parser(
        "publish", help="upload a trained folder to a Hub model repo (weights, configs, code, card, samples, metrics)",
        description="Upload the files of a trained folder that load it (safetensors weights, configs, pipeline and "
                    "model code) with its card, samples.png and metrics.json to a Hub model repo, created if needed. "
                    "Never checkpoints, optimizer state, pickles or temporary files. The token is huggingface_hub's "
                    "(HF_TOKEN or `hf auth login`).")
    publish.add_argument("folder", help="a pipeline folder written by an hfgen training script")
    publish.add_argument("--repo-id", required=True, help="the Hub model repo, e.g. user/hfgen-vae-fmnist")
    publish.add_argument("--private", action="store_true", help="create the repo as private (a new repo only)")
    publish.add_argument("--revision", default=None, help="the branch to publish to (created if needed; default main)")
    publish.add_argument("--commit-message", default=None)
    publish.add_argument("--include-logs", action="store_true", help="also upload the tensorboard logs (logs/)")
    publish.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded and stop")
    publish.set_defaults(func=cmd_publish)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    """``hfgen train FAMILY [flags]``: the training scripts' flags and code path, for an installed hfgen."""
    from .families import FAMILIES
    from .training import build_parser as build_training_parser, train

    family = FAMILIES[args.family]()
    parser = build_training_parser(family)
    parser.prog = f"hfgen train {args.family}"
    train(family, parser.parse_args(args.training_flags))
    return 0


def train_usage() -> str:
    """What ``hfgen train`` and ``hfgen train --help`` print: the families and how to get each one's flags."""
    from .families import FAMILIES

    lines = ["usage: hfgen train FAMILY [flags]", "", "Train a model with the shared Accelerate loop (the flags of "
             "training/train_FAMILY.py; `accelerate launch training/train_FAMILY.py` runs several processes).", "",
             "families:"]
    for name, family in FAMILIES.items():
        lines.append(f"  {name:<6} {family.summary}")
    lines += ["", "Each family's flags and presets: hfgen train FAMILY --help"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # everything after the family belongs to the training parser, --help included
        from .families import FAMILIES

        family = argv[1] if len(argv) > 1 else None
        if family in (None, "-h", "--help"):
            print(train_usage(), file=sys.stdout if family else sys.stderr)
            return 0 if family else 2
        if family not in FAMILIES:
            print(f"{train_usage()}\n\nhfgen train: error: expected a family, one of {', '.join(FAMILIES)}, got "
                  f"{family!r}", file=sys.stderr)
            return 2
        args = argparse.Namespace(command="train", func=cmd_train, family=family, training_flags=argv[2:])
    else:
        args = build_parser().parse_args(argv)
    for key in ("num_images", "importance_samples", "vlb_timesteps", "batch_size", "num_samples",
                "samples_per_class"):
        if getattr(args, key, None) is not None and getattr(args, key) < 1:
            print(f"hfgen: error: --{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hfgen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
