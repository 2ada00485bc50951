"""Command-line arguments every training script shares, and how presets fill the ones left unset.

Precedence, lowest first: ``COMMON_DEFAULTS`` < the family's preset (``--preset tiny|small|base``) < flags given
on the command line. Flags that a preset may set default to ``None`` in the parser for that reason.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..families.base import ModelFamily

#: ``--optimizer`` choices (``hfgen.training.loop.build_optimizer_and_ema`` builds them)
OPTIMIZERS = ("adamw", "adamax")

#: defaults for settings that no preset sets
COMMON_DEFAULTS: dict[str, Any] = dict(
    train_batch_size=64,
    learning_rate=1e-3,
    max_train_steps=1000,
    lr_warmup_steps=100,
    eval_steps=0,
    sample_steps=0,
    checkpointing_steps=0,
    logging_steps=10,
    eval_max_samples=1000,
    final_eval_max_samples=2000,
    final_importance_samples=1,
    num_sample_images=64,
    ema_decay=0.999,
    adam_beta2=0.999,
    max_grad_norm=100.0,
    fd_steps=0,
    fd_num_samples=2000,
    label_dropout=0.1,
    skip_grad_norm_factor=0.0,
    skip_grad_norm_warmup=20,
)


class _FlagParser(argparse.ArgumentParser):
    """Takes every flag in both spellings, ``--max_train_steps`` and ``--max-train-steps``, as accelerate does."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([_underscored(arg) for arg in args], namespace)


def _underscored(arg: str) -> str:
    if not arg.startswith("--") or arg == "--":
        return arg
    name, equals, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + equals + value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to a flag's help only when X is a value and the help does not already say what the
    default is: an unset flag (None) takes the preset's value, which the group titles say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(family: ModelFamily, description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``training/train_<family>.py``: the shared flags plus the family's own (each flag also
    in its dashed spelling)."""
    parser = _FlagParser(
        description=description or f"Train an hfgen {family.name} with Accelerate.",
        formatter_class=_HelpFormatter,
    )
    preset_help = "; ".join(f"{k}: {p.description}" for k, p in family.presets.items())
    parser.add_argument("--preset", choices=sorted(family.presets), default="small", help=preset_help)
    parser.add_argument("--output_dir", required=True,
                        help="where the pipeline folder, metrics.json, samples, logs and checkpoints go: a new or "
                             "empty folder, or the folder of a run of the same family and model config to resume "
                             "(--resume_from_checkpoint)")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="clear a non-empty --output_dir (another or a finished run) before training into it")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the model's initialisation, each epoch's batches and each step's noise")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="fashion_mnist",
                      help="'fashion_mnist', a Hub dataset id, a folder of images, or a folder of parquet/arrow files")
    data.add_argument("--dataset_config_name", default=None, help="the configuration of a Hub dataset that has several")
    data.add_argument("--image_column", default=None,
                      help="the column of images (default: 'image', else 'img', else the first column of images)")
    data.add_argument("--train_split", default="train", help="split of the training images")
    data.add_argument("--eval_split", default="validation",
                      help="split of the evaluations during training (and of every choice made from them); "
                           "'validation' is held out of 'train' when the data set has none (Fashion-MNIST: the "
                           "last 5,000 training images)")
    data.add_argument("--final_eval_split", default="test",
                      help="split of the final figures written to metrics.json and the model card")
    data.add_argument("--sample_size", type=int, default=32, help="image height and width the model sees (pixels)")
    data.add_argument("--channels", type=int, choices=(1, 3), default=None,
                      help="image channels (default: from the data)")
    data.add_argument("--convert_channels", action="store_true",
                      help="convert images whose channel count differs instead of stopping")
    data.add_argument("--resize_mode", choices=("auto", "pad", "resize"), default="auto",
                      help="pad smaller images with zeros, resize larger ones (auto), or force one")
    data.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training images")
    data.add_argument("--random_flip", action="store_true", help="random horizontal flips of training images")
    data.add_argument("--class_conditional", action="store_true",
                      help="train a class-conditional model: p(x | y) for the data's K classes and, through label "
                           "dropout, p(x) (the null class) in the same model; the class count and names come from "
                           "the data")
    data.add_argument("--label_column", default=None,
                      help="the column of class labels (default: the one datasets.ClassLabel column: Fashion-MNIST's "
                           "label files, an imagefolder's class folders, a Hub or parquet data set declaring one)")
    data.add_argument("--label_dropout", type=float, default=None,
                      help="fraction of training labels replaced by the null class (with --class_conditional; "
                           "default 0.1): what makes unconditional samples, log p(x) and classifier-free guidance "
                           "possible")

    opt = parser.add_argument_group("optimisation (unset flags take the preset's value)")
    opt.add_argument("--train_batch_size", type=int, default=None, help="images per process per micro-batch")
    opt.add_argument("--gradient_accumulation_steps", type=int, default=1,
                     help="micro-batches per optimizer step")
    opt.add_argument("--learning_rate", type=float, default=None, help="peak learning rate")
    opt.add_argument("--lr_scheduler", choices=("cosine", "linear", "constant"), default="cosine",
                     help="decay after warm-up, over max_train_steps or the --max_train_minutes budget")
    opt.add_argument("--lr_warmup_steps", type=int, default=None, help="steps of linear learning-rate warm-up")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                     help="adamw (decoupled weight decay) or adamax (Adam with an infinity-norm second moment, as "
                          "NVAE trains); both take the --adam_* settings")
    opt.add_argument("--adam_beta1", type=float, default=0.9, help="Adam's first-moment decay")
    opt.add_argument("--adam_beta2", type=float, default=None,
                     help=f"Adam's second-moment decay (default: the preset's, else {COMMON_DEFAULTS['adam_beta2']})")
    opt.add_argument("--adam_weight_decay", type=float, default=0.0,
                     help="decoupled weight decay (AdamW); Adamax adds it to the gradient")
    opt.add_argument("--adam_epsilon", type=float, default=1e-8, help="Adam's denominator epsilon")
    opt.add_argument("--max_grad_norm", type=float, default=None, help="clip the gradient norm (0: no clipping)")
    opt.add_argument("--skip_grad_norm_factor", type=float, default=None,
                     help="skip (and count) an update whose gradient norm is above this many times its running mean "
                          "(adaptive, never more than a few updates in a row; 0: off)")
    opt.add_argument("--skip_grad_norm_warmup", type=int, default=None,
                     help="gradient norms seen before --skip_grad_norm_factor starts skipping")
    opt.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps")
    opt.add_argument("--max_train_minutes", type=float, default=None,
                     help="wall-clock budget for training (evaluation and checkpoints excluded); stops at "
                          "whichever of this and --max_train_steps comes first")
    opt.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                     help="autocast precision: bf16 or fp16 on a GPU (refused on a CPU, where float16 has no fast "
                          "arithmetic); default: what `accelerate launch` / accelerate config says")
    opt.add_argument("--gradient_checkpointing", action="store_true",
                     help="recompute activations in the backward pass: less memory, slower steps")
    opt.add_argument("--no_channels_last", action="store_true",
                     help="keep the default memory format (channels_last is faster for these conv nets)")
    opt.add_argument("--torch_compile", action="store_true",
                     help="torch.compile the model for training steps (first steps are slower while it compiles)")
    opt.add_argument("--torch_compile_mode", choices=("default", "reduce-overhead", "max-autotune"),
                     default="default", help="torch.compile mode; reduce-overhead replays CUDA graphs on GPUs, "
                     "which pays for small models whose steps are bound by kernel launches")
    opt.add_argument("--no_ema", action="store_true", help="save the raw weights instead of an EMA of them")
    opt.add_argument("--ema_decay", type=float, default=None,
                     help="decay of the EMA of the weights that is saved and evaluated")

    track = parser.add_argument_group("evaluation, samples, checkpoints and logs")
    track.add_argument("--logging_steps", type=int, default=None,
                       help="log the training figures every N steps, each the mean over those N steps")
    track.add_argument("--eval_steps", type=int, default=None, help="--eval_split bits/dim (ELBO) every N steps (0: off)")
    track.add_argument("--eval_max_samples", type=int, default=None,
                       help="--eval_split images of the evaluations during training, the first N (0: the whole split)")
    track.add_argument("--eval_batch_size", type=int, default=256,
                       help="images per batch in evaluations and sampling")
    track.add_argument("--sample_steps", type=int, default=None, help="sample grid every N steps (0: off)")
    track.add_argument("--num_sample_images", type=int, default=None,
                       help="images in each sample grid (a class-conditional model: one row per class)")
    track.add_argument("--final_eval_max_samples", type=int, default=None,
                       help="--final_eval_split images for the final metrics.json, the first N (0: the whole split)")
    track.add_argument("--final_importance_samples", type=int, default=None,
                       help="importance samples K of the final importance-weighted bound (DDPM and latent "
                            "diffusion: stratified L_vlb timesteps per image, default 16)")
    track.add_argument("--fd_steps", type=int, default=None,
                       help="fd_fmnist of --fd_num_samples generated images every N steps, and at the end into "
                            "metrics.json (0: off; Fashion-MNIST-like data only: 1 channel, sample_size 32)")
    track.add_argument("--fd_num_samples", type=int, default=None, help="generated images per fd_fmnist")
    track.add_argument("--checkpointing_steps", type=int, default=None, help="save_state every N steps (0: off)")
    track.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep at most this many checkpoints")
    track.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    track.add_argument("--report_to", default="tensorboard",
                       help="an Accelerate tracker (tensorboard, wandb, comet_ml, mlflow, aim, clearml, dvclive, "
                            "swanlab, trackio; installed), 'all' (every installed one) or 'none'")

    hub = parser.add_argument_group(
        "publishing to the Hub (the token is huggingface_hub's: HF_TOKEN or `hf auth login`; never a flag, so that it "
        "cannot end up in training_config.json)")
    hub.add_argument("--push_to_hub", action="store_true",
                     help="create the repo before training and upload the final folder (hfgen.hub.publish: weights, "
                          "configs, code, card, sample grid, metrics; never checkpoints or logs)")
    hub.add_argument("--hub_model_id", default=None, help="the repo to publish to, e.g. user/hfgen-vae-fmnist")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repo as private")
    hub.add_argument("--hub_revision", default=None, help="publish to this branch (created if needed; default main)")

    family.add_arguments(parser)
    return parser


def resolve_config(args: argparse.Namespace, family: ModelFamily) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Fill unset flags from the preset, then from ``COMMON_DEFAULTS``; return (settings, model config)."""
    if (args.label_column is not None or args.label_dropout is not None) and not args.class_conditional:
        raise ValueError("--label_column and --label_dropout apply to class-conditional training; add "
                         "--class_conditional (or leave them unset)")
    preset = family.presets[args.preset]
    resolved = argparse.Namespace(**vars(args))
    defaults = {**COMMON_DEFAULTS, "final_importance_samples": family.default_importance_samples, **preset.training}
    for key, value in defaults.items():
        if getattr(resolved, key, None) is None:
            setattr(resolved, key, value)
    model_config = dict(preset.model)
    for key in family.model_arguments:
        value = getattr(args, key, None)
        if value is not None:
            model_config[key] = value
    _validate(resolved)
    return resolved, model_config


def _validate(cfg: argparse.Namespace) -> None:
    positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "eval_batch_size",
                "num_sample_images", "final_importance_samples", "sample_size", "logging_steps", "fd_num_samples")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key} must be >= 1, got {getattr(cfg, key)}")
    non_negative = ("lr_warmup_steps", "eval_steps", "sample_steps", "checkpointing_steps", "max_grad_norm",
                    "final_eval_max_samples", "eval_max_samples", "fd_steps",
                    "skip_grad_norm_factor", "skip_grad_norm_warmup")
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ValueError(f"--{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {cfg.learning_rate}")
    if cfg.max_train_minutes is not None and cfg.max_train_minutes <= 0:
        raise ValueError(f"--max_train_minutes must be > 0, got {cfg.max_train_minutes}")
    if not 0.0 <= cfg.adam_beta2 < 1.0:
        raise ValueError(f"--adam_beta2 must be in [0, 1), got {cfg.adam_beta2}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if not 0.0 <= cfg.label_dropout < 1.0:
        raise ValueError(f"--label_dropout must be in [0, 1) (the fraction of labels replaced by the null class), "
                         f"got {cfg.label_dropout}")
    if getattr(cfg, "push_to_hub", False) and not getattr(cfg, "hub_model_id", None):
        raise ValueError("--push_to_hub needs --hub_model_id (the repo to publish to, e.g. user/hfgen-vae)")
    if cfg.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {cfg.checkpoints_total_limit}")
    _check_tracker(cfg.report_to)


def check_mixed_precision(mixed_precision: str, device_type: str) -> None:
    """Refuse float16 autocast on a CPU: CPUs have no fast float16 arithmetic, so every step is converted back and
    forth and training runs several times slower than in float32, without an error or a warning."""
    if mixed_precision == "fp16" and device_type == "cpu":
        raise ValueError("--mixed_precision fp16 on a CPU: CPUs have no fast float16 arithmetic, so training would "
                         "run several times slower than in float32; expected --mixed_precision no (or bf16 on a CPU "
                         "with AVX-512 BF16 or AMX), or a GPU")


def _check_tracker(report_to: str) -> None:
    """``--report_to``: a tracker Accelerate knows and this environment has installed (Accelerate itself would
    drop a missing one with a log line and train without any logging), 'all' or 'none'."""
    if report_to in ("none", "all"):
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [str(tracker) for tracker in LoggerType.list() if str(tracker) != "all"]
    if report_to not in known:
        raise ValueError(f"--report_to {report_to!r}: expected one tracker of {', '.join(known)}, 'all' or 'none'")
    if report_to not in [str(tracker) for tracker in get_available_trackers()]:
        raise ValueError(f"--report_to {report_to}: {report_to} is not installed, so nothing would be logged; "
                         f"expected `pip install {report_to}` first, or --report_to tensorboard or none")
