"""The one training loop every hfgen family uses (Accelerate).

It owns: processes and devices, mixed precision, gradient accumulation, the learning-rate warm-up and decay,
gradient clipping, skipping (and counting) updates whose loss or gradient is not finite, EMA weights, logging to
Accelerate's trackers and a progress bar, test-set bits/dim and sample grids every N steps, crash-safe
checkpoints and resume, and a wall-clock budget. Beside it: ``batches`` (which images form each micro-batch, the
splits), ``checkpoints``, ``output_dir`` and ``final_folder`` (the pipeline folder with ``metrics.json``,
``samples.png`` and a model card). The family (``hfgen.families``) owns the model and its objective.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, set_seed
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid

from ..data import public_dataset_name
from ..evaluation import GIVEN_LABEL, evaluate_likelihood
from ..families.base import ModelFamily
from ..files import write_json_atomically
from ..progress import progress_bar
from .arguments import check_mixed_precision, resolve_config
from .batches import BatchSchedule, check_same_classes, load_split
from .checkpoints import load_checkpoint, resolve_resume_path, save_checkpoint
from .final_folder import write_final_folder
from .output_dir import check_output_dir, clear_output_dir, remove_failed_run

logger = logging.getLogger("hfgen.training")


@dataclass
class TrainingState:
    """Counters saved in every checkpoint (registered with ``Accelerator.register_for_checkpointing``)."""

    step: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0  # time spent in training steps only (no evaluation, sampling, checkpoints)
    images_seen: int = 0  # over all processes
    grad_norm_mean: float = 0.0  # running mean of the (pre-clipping) gradient norm, see grad_norm_spike
    grad_norm_count: int = 0  # finite gradient norms seen
    consecutive_skips: int = 0  # updates skipped in a row as gradient-norm spikes

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def lr_factor(step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then ``schedule`` over ``progress``
    (the fraction of the step or time budget used, in [0, 1])."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


#: a gradient-norm spike is never skipped more than this many steps in a row: the update is then applied (clipped)
MAX_CONSECUTIVE_SPIKE_SKIPS = 10


def grad_norm_spike(state: TrainingState, grad_norm: float, factor: float, warmup: int) -> bool:
    """Whether an update with gradient norm ``grad_norm`` is a spike to skip (``--skip_grad_norm_factor``), and
    update the running statistics in ``state``.

    A spike is a norm above ``factor`` times the running mean of the norms, once ``warmup`` norms have been
    seen. The mean takes every finite norm, each capped at ``factor`` times the mean, so a lasting rise of the
    gradient norm raises the threshold within tens of steps; and at most ``MAX_CONSECUTIVE_SPIKE_SKIPS``
    updates in a row are skipped. Skipping therefore adapts and can never stop training. ``factor`` 0: off
    (statistics only)."""
    if not math.isfinite(grad_norm):
        return False
    armed = factor > 0 and state.grad_norm_count >= warmup
    spike = (armed and grad_norm > factor * state.grad_norm_mean
             and state.consecutive_skips < MAX_CONSECUTIVE_SPIKE_SKIPS)
    capped = min(grad_norm, factor * state.grad_norm_mean) if armed else grad_norm
    decay = min(0.99, state.grad_norm_count / (state.grad_norm_count + 1))  # a plain mean at first, then an EMA
    state.grad_norm_mean = decay * state.grad_norm_mean + (1 - decay) * capped
    state.grad_norm_count += 1
    state.consecutive_skips = state.consecutive_skips + 1 if spike else 0
    return spike


def _flatten_for_logs(prefix: str, values: dict) -> dict[str, float]:
    """Scalars and lists of scalars of a diagnostics dict as tracker entries (``prefix/key`` or ``prefix/key_i``)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, (int, float)):
            flat[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, (list, tuple)):
            flat.update({f"{prefix}/{key}_{i:02d}": float(v) for i, v in enumerate(value)})
    return flat


def _no_accelerator_present() -> bool:
    """True on a machine with no GPU: Accelerate then runs several processes on the CPU (gloo) when launched
    with ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun --nproc_per_node N``."""
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    if torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available():
        return False
    if os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ and "LOCAL_RANK" not in os.environ:
        logger.warning(
            "several processes were asked for, but `accelerate launch --cpu` starts only one; on a CPU-only "
            "machine use `accelerate launch --multi_gpu --num_processes N` (hfgen then runs N CPU processes)")
    return True


def build_optimizer_and_ema(model: torch.nn.Module, cfg, device: torch.device) -> tuple[torch.optim.Optimizer,
                                                                                          EMAModel | None]:
    """The optimizer (``cfg.optimizer``: AdamW, or Adamax) and the EMA weights (``None`` with ``cfg.no_ema``) that
    ``train`` gives ``model``. AdamW is fused (one kernel over all parameters per step instead of a loop over the
    parameter tensors) on CUDA and on CPUs: on 2 CPU cores the loop took 4.6 ms of a 113 ms DDPM ``small`` step, the
    fused kernel 1.2 ms, with the same update rule and state. Adamax (no fused kernel in torch) updates all tensors
    at once (``foreach``), as does the EMA."""
    settings = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                    eps=cfg.adam_epsilon)
    if cfg.optimizer == "adamax":
        optimizer = torch.optim.Adamax(model.parameters(), **settings, foreach=True)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), **settings,
                                      fused=True if device.type in ("cuda", "cpu") else None)
    ema = None
    if not cfg.no_ema:
        ema = EMAModel(model.parameters(), decay=cfg.ema_decay, foreach=True, model_cls=type(model),
                       model_config=model.config)
    return optimizer, ema


def train_step(family: ModelFamily, model, optimizer, accelerator: Accelerator, cfg, train_images: torch.Tensor,
               batches: BatchSchedule, step: int, lr: float, ema: EMAModel | None = None, ema_model=None,
               state: TrainingState | None = None, train_labels: torch.Tensor | None = None):
    """One optimizer step (``cfg.gradient_accumulation_steps`` micro-batches) of the loop, factored out so that
    benchmarks time exactly what ``train`` runs: batches indexed from the uint8 split, the family's loss under
    autocast, backward, clipping, learning rate ``lr``, the update unless its loss or gradient is not finite, and
    the EMA step (of ``ema_model``'s parameters). With ``train_labels`` (a class-conditional model on K classes),
    each image's class index goes to the loss, replaced by the null class K at the rate ``cfg.label_dropout``. With ``state``, an update whose gradient norm is a spike
    (``grad_norm_spike``, ``--skip_grad_norm_factor``) is skipped too and ``state`` keeps the running statistics.
    One host-device sync. Returns ``(applied, grad_norm, logs_sum, skip_reason)`` where ``logs_sum`` holds the
    micro-batch means of ``loss`` and the family's logs (tensors) and ``skip_reason`` says why an update was not
    applied (``None`` when it was)."""
    device = accelerator.device
    nonfinite_loss = torch.zeros((), device=device)
    logs_sum: dict[str, torch.Tensor] = {}
    for micro in range(cfg.gradient_accumulation_steps):
        micro_index = step * cfg.gradient_accumulation_steps + micro
        indices = batches.indices(micro_index).to(train_images.device)
        images = train_images[indices].to(device, non_blocking=True)
        generator = torch.Generator(device=device).manual_seed(
            (cfg.seed * 1_000_003 + micro_index) * accelerator.num_processes + accelerator.process_index)
        if cfg.random_flip:
            flip = torch.rand(images.shape[0], generator=generator, device=device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        family_kwargs = {}
        if train_labels is not None:
            labels = train_labels[indices.to(train_labels.device)].to(device, non_blocking=True)
            dropped = torch.rand(labels.shape[0], generator=generator, device=device) < cfg.label_dropout
            family_kwargs["class_labels"] = torch.where(dropped, cfg.num_classes, labels)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, logs = family.loss(model, images, step, generator, cfg, **family_kwargs)
            nonfinite_loss = torch.maximum(nonfinite_loss, (~torch.isfinite(loss.detach())).float())
            accelerator.backward(loss)
            for key, value in {"loss": loss.detach(), **logs}.items():
                logs_sum[key] = logs_sum.get(key, 0.0) + value.float() / cfg.gradient_accumulation_steps
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(
                    model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                if accelerator.num_processes > 1:
                    nonfinite_loss = accelerator.reduce(nonfinite_loss, "max")
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # One host-device sync per optimizer step decides whether the update is applied.
                finite, grad_norm_value = torch.stack([
                    (torch.isfinite(grad_norm) & (nonfinite_loss == 0)).float(), grad_norm.float()]).tolist()
                update_is_finite = bool(finite)
                spike = update_is_finite and state is not None and grad_norm_spike(
                    state, grad_norm_value, cfg.skip_grad_norm_factor, cfg.skip_grad_norm_warmup)
                if spike and accelerator.scaler is not None:
                    accelerator.scaler.update()  # after unscaling, the GradScaler expects a step or an update
                elif (update_is_finite and not spike) or accelerator.scaler is not None:
                    optimizer.step()  # with fp16 the GradScaler itself skips non-finite updates
                applied = update_is_finite and not spike and not accelerator.optimizer_step_was_skipped
                optimizer.zero_grad(set_to_none=True)
    skip_reason = None
    if spike:
        skip_reason = (f"gradient norm {grad_norm_value:.3g} > {cfg.skip_grad_norm_factor:g} x its running mean "
                       f"{state.grad_norm_mean:.3g}")
    elif not applied:
        skip_reason = "non-finite loss or gradient"
    if applied and ema is not None:
        ema.step(ema_model.parameters())
    return applied, grad_norm, logs_sum, skip_reason


def train(family: ModelFamily, args: argparse.Namespace) -> dict:
    """Train ``family`` as ``args`` says (see ``build_parser``); returns the final metrics (main process). A run
    that fails before writing a checkpoint removes the output folder it created."""
    created = not Path(args.output_dir).exists()
    try:
        run = TrainingRun.setup(family, args)
        last_validation = run_training_steps(run)
        return write_final_folder(run, last_validation)
    except BaseException:
        if created and int(os.environ.get("RANK", "0")) == 0:
            remove_failed_run(args.output_dir)
        raise


class TrainingRun:
    """Everything a training run holds: settings, Accelerate, the data, the model with its optimiser, EMA weights
    and checkpointed state, and what evaluates and samples it. ``setup`` builds it (resuming from a checkpoint
    when asked); ``run_training_steps`` and ``write_final_folder`` use it."""

    @classmethod
    def setup(cls, family: ModelFamily, args: argparse.Namespace) -> "TrainingRun":
        run = cls()
        run.family = family
        cfg, model_config = resolve_config(args, family)
        check_output_dir(cfg, family.name, model_config)  # before anything is loaded or written
        family.configure(cfg)
        run.cfg, run.output_dir = cfg, Path(cfg.output_dir)
        accelerator = run.accelerator = Accelerator(
            cpu=_no_accelerator_present(),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=None if cfg.report_to == "none" else cfg.report_to,
            project_config=ProjectConfiguration(project_dir=str(run.output_dir),
                                                logging_dir=str(run.output_dir / "logs")),
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        check_mixed_precision(accelerator.mixed_precision, accelerator.device.type)  # before anything is written
        if accelerator.is_main_process:
            if cfg.overwrite_output_dir:
                clear_output_dir(run.output_dir)
            run.output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        set_seed(cfg.seed)  # model initialisation; per-step noise uses its own generators
        run.model_config = run._load_data(model_config)
        run._build_model()
        run._resume_or_start()
        run._prepare_sample_quality()
        return run

    def _load_data(self, model_config: dict) -> dict:
        """The training and validation splits as uint8 tensors (whole splits in memory); returns the model config
        with ``source_size`` when the data layer zero-padded the images (what the family does with it: see
        ``ModelFamily.build_model``)."""
        cfg, accelerator = self.cfg, self.accelerator
        train = load_split(cfg, cfg.train_split, cfg.channels, cfg.max_train_samples, accelerator)
        self.train_images, self.train_labels, source_shape = train.images, train.labels, train.source_shape
        self.channels = self.train_images.shape[1]
        evaluation = load_split(cfg, cfg.eval_split, self.channels, cfg.eval_max_samples or None, accelerator)
        self.eval_images, self.eval_labels, self.eval_source_shape = (evaluation.images, evaluation.labels,
                                                                      evaluation.source_shape)
        self.device = accelerator.device
        if self.device.type == "cuda" and self.train_images.numel() < 4 * 2**30:
            self.train_images = self.train_images.to(self.device)  # dequantisation and flips happen on the device
            if self.train_labels is not None:
                self.train_labels = self.train_labels.to(self.device)
        if cfg.class_conditional:
            # the class count and names come from the data; every split must declare the same classes
            check_same_classes(train.class_names, evaluation.class_names, cfg.train_split, cfg.eval_split)
            cfg.num_classes, cfg.class_names = len(train.class_names), train.class_names
            model_config = {**model_config, "num_classes": cfg.num_classes, "class_names": cfg.class_names}
        self.batches = BatchSchedule(self.train_images.shape[0], cfg.train_batch_size, cfg.seed,
                                     accelerator.process_index, accelerator.num_processes)
        # bits/dim count the data's own pixels; a VAE family then scores only those (the padded border is a fixed
        # function of the image), so that its bound is one on the unpadded image, and every family's pipeline
        # returns samples at that size
        cfg.source_shape = source_shape.as_list()
        if (source_shape.is_padded(cfg.sample_size) and not source_shape.mixed_sizes
                and "source_size" not in model_config):
            model_config = {**model_config, "source_size": [source_shape.height, source_shape.width]}
        return model_config

    def _build_model(self) -> None:
        """The model, its optimiser and EMA weights, prepared by Accelerate (and compiled when asked)."""
        cfg, accelerator = self.cfg, self.accelerator
        model = self.family.build_model(self.model_config, self.channels, cfg.sample_size)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if not cfg.no_channels_last:
            model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs (oneDNN) and GPUs alike
        self.num_parameters = sum(p.numel() for p in model.parameters())
        optimizer, self.ema = build_optimizer_and_ema(model, cfg, self.device)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.unwrapped = accelerator.unwrap_model(self.model)
        if cfg.torch_compile:  # opt-in; `unwrapped` stays the eager module (EMA, evaluation, sampling, saving)
            self.model = torch.compile(self.model, mode=cfg.torch_compile_mode)

    def _resume_or_start(self) -> None:
        """Register what checkpoints hold, resume from one when asked, create the Hub repo early, write
        ``training_config.json`` and start the trackers."""
        cfg, accelerator, family = self.cfg, self.accelerator, self.family
        self.state = TrainingState()
        if self.ema is not None:
            self.ema.to(self.device)
            accelerator.register_for_checkpointing(self.ema)
        accelerator.register_for_checkpointing(self.state)
        resume_path = resolve_resume_path(self.output_dir, cfg.resume_from_checkpoint)
        if resume_path is not None:
            accelerator.print(f"resuming from {resume_path}")
            load_checkpoint(accelerator, resume_path)
            if self.ema is not None:
                self.ema.to(self.device)  # the EMA weights come back from the checkpoint on the CPU
        elif cfg.resume_from_checkpoint:
            accelerator.print("no checkpoint found under --output_dir; starting a fresh run")
        if getattr(cfg, "push_to_hub", False) and accelerator.is_main_process:
            # before any training: a missing token or a repo that cannot be created stops the run now, not at the end
            from ..hub import create_repo

            create_repo(cfg.hub_model_id, private=cfg.hub_private_repo, exist_ok=True, repo_type="model")
        if accelerator.is_main_process:
            write_json_atomically(self.output_dir / "training_config.json", self.training_config())
        if cfg.report_to != "none":
            accelerator.init_trackers(f"hfgen-{family.name}", config={
                k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))})

    def _prepare_sample_quality(self) -> None:
        """The feature network and validation statistics of ``--fd_steps`` (main process only)."""
        cfg = self.cfg
        self.fd_net = self.fd_reference = None
        if not cfg.fd_steps:
            return
        if (self.channels, cfg.sample_size) != (1, 32):
            raise ValueError(f"--fd_steps needs Fashion-MNIST-like data (1 channel, sample_size 32) for the fd_fmnist "
                             f"feature network; got {self.channels} channel(s), sample_size {cfg.sample_size}")
        if self.accelerator.is_main_process:
            from ..metrics import load_feature_net, reference_statistics

            self.fd_net = load_feature_net("fmnist", self.device)
            self.fd_reference = reference_statistics(
                cfg.dataset, cfg.eval_split, sample_size=cfg.sample_size, channels=self.channels,
                resize_mode=cfg.resize_mode, convert_channels=cfg.convert_channels, net=self.fd_net,
                config_name=cfg.dataset_config_name, image_column=cfg.image_column, show_progress=False)

    # ------------------------------------------------------------------ what the loop and the end use
    def training_config(self) -> dict:
        """``training_config.json``: every setting, with the data set and folders named, not given as paths of this
        machine (the file is published)."""
        settings = dict(vars(self.cfg))
        settings["dataset"] = public_dataset_name(self.cfg.dataset)
        for key in ("output_dir", "resume_from_checkpoint"):
            if settings.get(key) and settings[key] != "latest":
                settings[key] = Path(settings[key]).name
        for key in self.family.folder_arguments:  # a model the run builds on (latent diffusion's --vae)
            if settings.get(key) and Path(settings[key]).expanduser().is_dir():
                settings[f"{key}_repo_id"] = pushed_repo_id(Path(settings[key]).expanduser())
                settings[key] = Path(settings[key]).expanduser().resolve().name + LOCAL_FOLDER_SUFFIX
            elif settings.get(key):  # a Hub repo id
                settings[f"{key}_repo_id"] = settings[key]
        return {"family": self.family.name, "model_config": self.model_config, **settings}

    def evaluate(self, images: torch.Tensor, shape, importance_samples: int, class_labels=None) -> dict:
        """Likelihood bounds of the model as it is now over ``images`` (all processes take part), given
        ``class_labels`` (a conditional model: bounds on -log p(x | y); without them, its null class: -log p(x))."""
        accelerator = self.accelerator
        return evaluate_likelihood(
            self.family, self.unwrapped, images, importance_samples=importance_samples,
            batch_size=self.cfg.eval_batch_size, seed=self.cfg.seed, process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            reduce_sum=(lambda t: accelerator.reduce(t, "sum")) if accelerator.num_processes > 1 else None,
            show_progress=accelerator.is_local_main_process, source_shape=shape, class_labels=class_labels,
        )

    def _balanced_labels(self, num_images: int) -> list[int] | None:
        """Class indices 0, 1, .., K-1, 0, 1, .. for ``num_images`` samples of a conditional model (None otherwise)."""
        if not self.cfg.class_conditional:
            return None
        return [index % self.cfg.num_classes for index in range(num_images)]

    def sample_fd(self) -> float:
        """fd_fmnist of cfg.fd_num_samples images sampled from the model as it is now (main process only); a
        class-conditional model samples the classes in equal numbers."""
        from ..metrics import extract_features, generate_uint8, sample_quality

        images = generate_uint8(self.family, self.family.make_pipeline(self.unwrapped), self.cfg.fd_num_samples,
                                batch_size=self.cfg.eval_batch_size, seed=self.cfg.seed, show_progress=False,
                                channels=self.channels, sample_size=self.cfg.sample_size,
                                class_labels=self._balanced_labels(self.cfg.fd_num_samples))
        features = extract_features(self.fd_net, images, show_progress=False)
        return sample_quality(features, self.fd_reference, ("fd",))["fd_fmnist"]

    def sample_grid(self, path: Path, step: int) -> None:
        pipeline = self.family.make_pipeline(self.unwrapped)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        if self.cfg.class_conditional:  # every class equally often, in class order (10 x 10: one row per class)
            per_class = max(1, self.cfg.num_sample_images // self.cfg.num_classes)
            labels = [label for label in range(self.cfg.num_classes) for _ in range(per_class)]
            images = self.family.sample_images(pipeline, len(labels), generator, class_labels=labels)
        else:
            images = self.family.sample_images(pipeline, self.cfg.num_sample_images, generator)
        cols = int(math.ceil(math.sqrt(len(images))))  # a square-ish grid, read left to right
        rows = int(math.ceil(len(images) / cols))
        images = images + [images[0].copy().point(lambda _: 0)] * (rows * cols - len(images))
        grid = make_image_grid(images, rows=rows, cols=cols)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for tracker in self.accelerator.trackers:
            if hasattr(tracker, "log_images") and tracker.name == "tensorboard":
                import numpy as np

                tracker.log_images({"samples": np.asarray(grid)[None]}, step=step, dataformats="NHWC")

    def save_ema_pipeline(self, folder: Path) -> None:
        """The pipeline with the EMA weights as they are now, saved into ``folder`` (a checkpoint's)."""
        with self.ema_weights():
            self.family.make_pipeline(self.unwrapped).save_pretrained(folder, safe_serialization=True)

    @contextlib.contextmanager
    def ema_weights(self):
        """Within this block the model holds the EMA weights, in evaluation mode (no-op without EMA)."""
        self.model.eval()
        if self.ema is not None:
            self.ema.store(self.unwrapped.parameters())
            self.ema.copy_to(self.unwrapped.parameters())
        try:
            yield
        finally:
            if self.ema is not None:
                self.ema.restore(self.unwrapped.parameters())
            self.model.train()


def run_training_steps(run: TrainingRun) -> dict:
    """The step loop: optimizer steps until the step or time budget is spent, with logs, validation bounds, fd,
    sample grids and checkpoints at their cadences. Returns the last validation figures (for metrics.json)."""
    cfg, accelerator, state, device = run.cfg, run.accelerator, run.state, run.device
    budget_seconds = cfg.max_train_minutes * 60 if cfg.max_train_minutes else None
    global_batch = cfg.train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    accelerator.print(
        f"{run.family.name} ({cfg.preset}): {run.num_parameters / 1e6:.2f}M parameters, {run.train_images.shape[0]} "
        f"training images {tuple(run.train_images.shape[1:])}, {accelerator.num_processes} process(es) on {device}, "
        f"global batch {global_batch}, up to {cfg.max_train_steps} steps"
        + (f" or {cfg.max_train_minutes} min" if budget_seconds else "")
    )
    bar = progress_bar(total=cfg.max_train_steps, initial=state.step, desc="training",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    run.model.train()
    last_validation: dict = {}
    # the training figures (loss, bits_per_dim, ...) are logged as means over the logging window: the single-step
    # figures of a diffusion (one timestep per image) scatter by a bit per dim from step to step
    window_logs_sum: dict[str, torch.Tensor] = {}
    window_steps = 0
    while state.step < cfg.max_train_steps:
        if budget_seconds is not None:
            elapsed = torch.tensor([state.train_seconds], device=device)
            if accelerator.num_processes > 1:  # every process must agree on the LR and on when to stop
                elapsed = broadcast(elapsed, from_process=0)
            state.train_seconds = float(elapsed.item())
            if state.train_seconds >= budget_seconds:
                break
        step_started = time.perf_counter()
        progress = state.step / cfg.max_train_steps
        if budget_seconds is not None:
            progress = max(progress, state.train_seconds / budget_seconds)
        lr = cfg.learning_rate * lr_factor(state.step, progress, cfg.lr_warmup_steps, cfg.lr_scheduler)
        applied, grad_norm, logs_sum, skip_reason = train_step(
            run.family, run.model, run.optimizer, accelerator, cfg, run.train_images, run.batches, state.step, lr,
            ema=run.ema, ema_model=run.unwrapped, state=state, train_labels=run.train_labels)
        if not applied:
            state.skipped_steps += 1
            accelerator.print(f"step {state.step}: {skip_reason}; update skipped ({state.skipped_steps} skipped so far)")
        state.step += 1
        state.images_seen += global_batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        state.train_seconds += time.perf_counter() - step_started
        bar.update(1)

        if applied:  # the logged figures are means over the window's applied steps (tensor sums: no host sync)
            for key, value in logs_sum.items():
                window_logs_sum[key] = window_logs_sum.get(key, 0.0) + value
            window_steps += 1
        if state.step % cfg.logging_steps == 0 or state.step == cfg.max_train_steps:
            window_means = {key: value / window_steps for key, value in window_logs_sum.items()} if window_steps \
                else logs_sum  # every step of the window skipped: this step's figures
            logs = {f"train/{k}": float(v) for k, v in window_means.items()}
            window_logs_sum, window_steps = {}, 0
            logs.update({"train/lr": lr, "train/grad_norm": float(grad_norm),
                         "train/skipped_steps": state.skipped_steps, "train/grad_norm_mean": state.grad_norm_mean,
                         "train/img_per_s": state.images_seen / max(state.train_seconds, 1e-9)})
            accelerator.log(logs, step=state.step)
            postfix = {"loss": f"{logs['train/loss']:.4f}", "bpd": f"{logs['train/bits_per_dim']:.3f}",
                       "img/s": f"{logs['train/img_per_s']:.0f}"}
            if budget_seconds is not None:  # the step count's ETA means nothing when time is the budget
                postfix["left"] = f"{max(budget_seconds - state.train_seconds, 0) / 60:.1f} min"
            bar.set_postfix(postfix, refresh=False)
        if cfg.eval_steps and state.step % cfg.eval_steps == 0:
            last_validation = _validate(run)
        if cfg.fd_steps and state.step % cfg.fd_steps == 0 and accelerator.is_main_process:
            with run.ema_weights():
                fd = run.sample_fd()
            accelerator.log({"eval/fd_fmnist": fd, "eval/train_seconds": state.train_seconds}, step=state.step)
            accelerator.print(f"step {state.step}: fd_fmnist ({cfg.fd_num_samples} samples) {fd:.3f}")
        if cfg.sample_steps and state.step % cfg.sample_steps == 0 and accelerator.is_main_process:
            with run.ema_weights():
                run.sample_grid(run.output_dir / "samples" / f"step-{state.step:07d}.png", state.step)
        if cfg.checkpointing_steps and state.step % cfg.checkpointing_steps == 0:
            save_checkpoint(accelerator, run.output_dir, state.step, cfg.checkpoints_total_limit,
                            write_pipeline=run.save_ema_pipeline)
    bar.close()
    return last_validation


def _validate(run: TrainingRun) -> dict:
    """The ELBO on the validation images (and the family's diagnostics) with EMA weights, logged and printed."""
    cfg, accelerator, step = run.cfg, run.accelerator, run.state.step
    with run.ema_weights():
        metrics = run.evaluate(run.eval_images, run.eval_source_shape, run.family.validation_importance_samples,
                               run.eval_labels)
        diagnostics = (run.family.diagnostics(run.unwrapped, run.eval_images, run.eval_labels)
                       if accelerator.is_main_process else {})
    # a class-conditional model is validated given the labels: a bound on -log p(x | y), named so
    name = "bits_per_dim_elbo" + (GIVEN_LABEL if run.eval_labels is not None else "")
    k_name = "vlb_timesteps" if "vlb_timesteps" in metrics else "importance_samples"
    accelerator.log({f"eval/{name}": metrics["bits_per_dim_elbo"],
                     "eval/train_seconds": run.state.train_seconds,
                     **_flatten_for_logs("diagnostics", diagnostics)}, step=step)
    k_words = "timesteps" if k_name == "vlb_timesteps" else "importance samples"
    accelerator.print(f"step {step}: {cfg.eval_split} bits/dim ({'given the labels, ' if GIVEN_LABEL in name else ''}"
                      f"{metrics['num_samples']} images, {metrics['num_dims']} dims, {metrics[k_name]} {k_words} per "
                      f"image) {metrics['bits_per_dim_elbo']:.4f}")
    return {f"validation_{name}": metrics["bits_per_dim_elbo"], f"validation_{k_name}": metrics[k_name],
            "validation_split": f"{cfg.eval_split}[:{metrics['num_samples']}]", "validation_step": step}


LOCAL_FOLDER_SUFFIX = " (local folder)"


def pushed_repo_id(folder: Path) -> str | None:
    """The Hub repo a local trained folder was pushed to by its own training run (``--push_to_hub``), else None."""
    path = folder / "training_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return config.get("hub_model_id") if config.get("push_to_hub") else None
