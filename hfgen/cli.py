"""The ``hfgen`` command: sample from and evaluate trained pipeline folders.

    hfgen sample DIR --num-images 64 --seed 0 --out grid.png [--temperature 0.8]
    hfgen sample DDPM_DIR --scheduler ddim|dpm-solver++|ddpm --steps 50
    hfgen evaluate DIR --dataset fashion_mnist --split test [--max-samples N] [--importance-samples K]

``evaluate`` prints one JSON object on stdout (progress bars go to stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(path_or_repo_id: str, device: torch.device | str | None = None):
    """Load an hfgen pipeline folder (or Hub repo id) and return ``(pipeline, family)``."""
    from .families import family_for_pipeline_class

    path = Path(path_or_repo_id)
    if not path.is_dir():
        if path_or_repo_id.startswith((".", "/", "~")) or path.exists():
            raise FileNotFoundError(f"{path_or_repo_id!r} is not a folder; expected a pipeline folder written by an "
                                    f"hfgen training script (with model_index.json)")
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(path_or_repo_id, allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"]))
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} has no model_index.json; expected a pipeline folder written by an hfgen "
                                f"training script")
    class_name = json.loads(index.read_text()).get("_class_name")
    family = family_for_pipeline_class(class_name)
    pipeline = family.pipeline_class.from_pretrained(path, use_safetensors=True)
    if device is not None:
        pipeline.to(device)
    return pipeline, family


def cmd_sample(args: argparse.Namespace) -> int:
    from diffusers.utils import make_image_grid

    device = _device(args.device)
    pipeline, family = load_pipeline(args.model, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    options = {"temperature": args.temperature} if args.temperature is not None else {}
    options.update({k: getattr(args, k) for k in ("scheduler", "steps") if getattr(args, k) is not None})
    images = family.sample_images(pipeline, args.num_images, generator, **options)
    cols = args.cols or int(math.ceil(math.sqrt(len(images))))
    rows = int(math.ceil(len(images) / cols))
    blank = images[0].copy().point(lambda _: 0)
    grid = make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(json.dumps({"out": str(out), "num_images": len(images), "seed": args.seed, **options}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import images_to_uint8, load_image_dataset
    from .evaluation import evaluate_likelihood

    device = _device(args.device)
    pipeline, family = load_pipeline(args.model, device)
    model = family.model_of(pipeline)
    dataset = load_image_dataset(args.dataset, args.split, config_name=args.dataset_config_name,
                                 image_column=args.image_column)
    images = images_to_uint8(dataset, sample_size=model.config.sample_size, channels=model.config.in_channels,
                             resize_mode=args.resize_mode, convert_channels=args.convert_channels,
                             max_samples=args.max_samples or None, description=f"{args.split} images")
    model.eval().to(memory_format=torch.channels_last)
    metrics = evaluate_likelihood(family, model, images, importance_samples=args.importance_samples,
                                  batch_size=args.batch_size, seed=args.seed)
    metrics.update({"dataset": args.dataset, "split": args.split, "family": family.name})
    print(json.dumps(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfgen", description="Sample from and evaluate hfgen models.")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="write a grid of samples to a PNG file")
    sample.add_argument("model", help="a pipeline folder written by an hfgen training script, or a Hub repo id")
    sample.add_argument("--num-images", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")
    sample.add_argument("--temperature", type=float, default=None, help="prior temperature (VAE families)")
    sample.add_argument("--scheduler", choices=("ddpm", "ddim", "dpm-solver++"), default=None,
                        help="sampler for the trained network (DDPM family; default: the folder's own)")
    sample.add_argument("--steps", type=int, default=None,
                        help="sampling steps (DDPM family; default: T for ddpm, 50 for ddim and dpm-solver++)")
    sample.add_argument("--cols", type=int, default=None, help="grid columns (default: a square grid)")
    sample.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("evaluate", help="likelihood bounds on a data set split, as JSON")
    evaluate.add_argument("model", help="a pipeline folder written by an hfgen training script, or a Hub repo id")
    evaluate.add_argument("--dataset", default="fashion_mnist")
    evaluate.add_argument("--dataset-config-name", default=None)
    evaluate.add_argument("--image-column", default=None)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-samples", type=int, default=0, help="evaluate the first N images (0: all)")
    evaluate.add_argument("--importance-samples", type=int, default=1,
                          help="K of the importance-weighted bound (1: the ELBO only)")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--resize-mode", choices=("auto", "pad", "resize"), default="auto")
    evaluate.add_argument("--convert-channels", action="store_true")
    evaluate.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key in ("num_images", "importance_samples", "batch_size"):
        if getattr(args, key, 1) < 1:
            print(f"hfgen: error: --{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hfgen {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
