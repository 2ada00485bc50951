"""The end of a training run: the EMA weights into the model, the final bounds, and the folder a user loads
(pipeline, ``metrics.json``, ``samples.png``, model card), each file written whole; the Hub upload with
``--push_to_hub``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import public_dataset_name
from ..devices import device_description
from ..evaluation import given_label_figures, split_label
from ..files import write_json_atomically
from .batches import check_same_classes, load_split

if TYPE_CHECKING:
    from .loop import TrainingRun


def save_pipeline_folder(pipeline, output_dir: Path) -> None:
    """``save_pretrained`` into a temporary folder, then move each entry into ``output_dir``: a crash leaves
    either the previous entry or the new one, never a half-written weight file."""
    staging = output_dir / ".pipeline.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(staging, safe_serialization=True)
    for entry in staging.iterdir():
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def write_final_folder(run: TrainingRun, last_validation: dict) -> dict:
    """EMA weights into the model, the final bounds on ``--final_eval_split``, and the folder: pipeline,
    ``metrics.json``, ``samples.png``, model card (and the Hub upload with ``--push_to_hub``)."""
    cfg, accelerator, family, state, output_dir = run.cfg, run.accelerator, run.family, run.state, run.output_dir
    accelerator.wait_for_everyone()
    run.model.eval()
    if run.ema is not None:
        run.ema.copy_to(run.unwrapped.parameters())
    # config values measured on the training images with the final weights (the VAE's latent scaling_factor)
    fitted = family.fit_to_training_data(run.unwrapped, run.train_images,
                                         torch.Generator(device=run.device).manual_seed(cfg.seed))
    final = load_split(cfg, cfg.final_eval_split, run.channels, cfg.final_eval_max_samples or None, accelerator)
    final_images, final_split_size = final.images, final.split_size
    # bounds on -log p(x) under the plain keys (a class-conditional model: its null class), and for a
    # class-conditional model bounds on -log p(x | y) given the true labels, named so (bits_per_dim_elbo_given_label)
    if cfg.class_conditional:
        check_same_classes(final.class_names, cfg.class_names, cfg.final_eval_split, cfg.train_split)
    metrics = run.evaluate(final_images, final.source_shape, cfg.final_importance_samples)
    if cfg.class_conditional:
        metrics.update(given_label_figures(
            run.evaluate(final_images, final.source_shape, cfg.final_importance_samples, final.labels)))
        metrics["class_names"] = cfg.class_names
    if accelerator.is_main_process:
        save_pipeline_folder(family.make_pipeline(run.unwrapped), output_dir)
        run.sample_grid(output_dir / "samples.png", state.step)
        device = run.device
        metrics.update({
            "family": family.name,
            "preset": cfg.preset,
            "dataset": public_dataset_name(cfg.dataset),
            "split": split_label(cfg.final_eval_split, metrics["num_samples"], final_split_size),
            "split_size": final_split_size,
            **last_validation,
            "channels": run.channels,
            "sample_size": cfg.sample_size,
            "train_steps": state.step,
            "skipped_steps": state.skipped_steps,
            "train_seconds": state.train_seconds,
            "train_img_per_s": state.images_seen / max(state.train_seconds, 1e-9),
            "images_seen": state.images_seen,
            "num_parameters": run.num_parameters,
            "device": device_description(device),
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "ema": run.ema is not None,
            "grad_norm_mean": state.grad_norm_mean,
            **fitted,
        })
        # what the grid and the plain sample-quality keys show (draws, or a VAE's mean of p(x | z)): the card says it
        metrics["grid_images"] = family.sample_kind(dict(run.unwrapped.config), {})
        if cfg.fd_steps:
            metrics.update({"fd_fmnist": run.sample_fd(), "fd_num_samples": cfg.fd_num_samples,
                            "fd_split": cfg.eval_split, "sampled_images": metrics["grid_images"]})
        # the family's own end-of-training figures (e.g. KL and active units per latent group), EMA weights
        metrics.update(family.diagnostics(run.unwrapped, final_images, final.labels))
        write_json_atomically(output_dir / "metrics.json", metrics)
        from ..hub import write_model_card

        write_model_card(output_dir, family, metrics, run.training_config(),
                         repo_id=cfg.hub_model_id if getattr(cfg, "push_to_hub", False) else None)
        accelerator.print(json.dumps({k: metrics[k] for k in (
            "bits_per_dim_elbo", "bits_per_dim_iw", "bits_per_dim_elbo_given_label", "split", "num_samples",
            "num_dims", "importance_samples", "vlb_timesteps", "estimator", "train_steps", "skipped_steps",
            "train_seconds", "train_img_per_s") if k in metrics}))
        if getattr(cfg, "push_to_hub", False):
            from ..hub import publish

            commit = publish(output_dir, cfg.hub_model_id, private=cfg.hub_private_repo, revision=cfg.hub_revision,
                             commit_message=f"hfgen {family.name} ({cfg.preset}): {state.step} steps, "
                                            f"{metrics['bits_per_dim_elbo']:.4f} bits/dim (ELBO)",
                             refresh_card=False)
            accelerator.print(f"published to {getattr(commit, 'commit_url', cfg.hub_model_id)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics
