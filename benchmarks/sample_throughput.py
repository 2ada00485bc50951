#!/usr/bin/env python
"""DDPM sampling throughput: the DDPM sampler over all T steps against DDIM and DPM-Solver++ at 10, 20 and 50
steps, on one network (a preset's, randomly initialised, or a trained folder's with --model) and device.
Sampling cost does not depend on the weights, so a random network times the same as a trained one.

Prints img/s and seconds per image for each sampler; the last line is one JSON object. ``build_pipeline`` and
``time_samplers`` are what benchmarks/gpu_suite.py calls.

    python benchmarks/sample_throughput.py --preset small --batch-size 8 --device cpu
    python benchmarks/sample_throughput.py --preset ddpm-cifar --batch-size 256 --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfgen.devices import device_description  # noqa: E402
from hfgen.families import DDPMFamily  # noqa: E402
from hfgen.families.ddpm import SAMPLERS  # noqa: E402
from hfgen.training import build_parser, resolve_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(DDPMFamily.presets))
    parser.add_argument("--model", default=None, help="a trained DDPMPipeline folder instead of a preset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50],
                        help="step counts for DDIM and DPM-Solver++")
    parser.add_argument("--ddpm-steps", type=int, default=None, help="DDPM sampler steps (default: T)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--channels", type=int, default=1, help="image channels of a preset network")
    parser.add_argument("--sample-size", type=int, default=32)
    return parser


def build_pipeline(preset: str | None, model: str | None, channels: int, sample_size: int, device, dtype: str):
    """A trained folder's DDPMPipeline (``model``) or a randomly initialised one of ``preset``, on ``device`` in
    ``dtype``; returns (pipeline, label)."""
    if model:
        pipeline = DDPMPipeline.from_pretrained(model)
        label = model
    else:
        family = DDPMFamily()
        _, model_config = resolve_config(build_parser(family).parse_args(
            ["--output_dir", "unused", "--preset", preset]), family)
        torch.manual_seed(0)
        unet = family.build_model(model_config, channels, sample_size)
        pipeline = DDPMPipeline(unet=unet, scheduler=family.scheduler)
        label = f"preset {preset}"
    pipeline.unet.to(device=device, dtype=DTYPES[dtype], memory_format=torch.channels_last).eval()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, label


def _sample(pipeline, name: str, steps: int, batch_size: int, device, seed: int = 0) -> torch.Tensor:
    scheduler_class, extra = SAMPLERS[name]
    sampler = DDPMPipeline(unet=pipeline.unet, scheduler=scheduler_class.from_config(pipeline.scheduler.config,
                                                                                      **extra))
    sampler.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        images = sampler(batch_size=batch_size, generator=generator, num_inference_steps=steps,
                         output_type="pt").images
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images


def time_samplers(pipeline, runs: list[tuple[str, int]], batch_size: int, device) -> dict:
    """``{"<sampler>_<steps>": {"steps", "img_per_s", "s_per_img"}}`` for each (sampler, steps) of ``runs``,
    after one short warm-up run."""
    _sample(pipeline, "ddim", 2, batch_size, device)  # warm-up
    results = {}
    for name, steps in runs:
        started = time.perf_counter()
        images = _sample(pipeline, name, steps, batch_size, device)
        seconds = time.perf_counter() - started
        assert images.shape[0] == batch_size and torch.isfinite(images).all()
        key = f"{name}_{steps}"
        results[key] = {"steps": steps, "img_per_s": round(batch_size / seconds, 4),
                        "s_per_img": round(seconds / batch_size, 4)}
        print(f"{key:>18}: {batch_size / seconds:9.3f} img/s  {seconds / batch_size:8.3f} s/img", flush=True)
    return results


def main(argv=None) -> dict:
    args = build_arg_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline, label = build_pipeline(args.preset, args.model, args.channels, args.sample_size, device, args.dtype)
    num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    runs = [("ddpm", args.ddpm_steps or num_train_timesteps)]
    runs += [(name, steps) for name in ("ddim", "dpm-solver++") for steps in args.steps]
    num_parameters = sum(p.numel() for p in pipeline.unet.parameters())
    print(f"{label}: {num_parameters / 1e6:.2f}M parameters, batch {args.batch_size}, {args.dtype}, {device}")
    results = time_samplers(pipeline, runs, args.batch_size, device)
    ddpm_key = f"ddpm_{runs[0][1]}"
    summary = {
        "img_per_s": {k: v["img_per_s"] for k, v in results.items()},
        "speedup_vs_ddpm": {k: round(v["img_per_s"] / results[ddpm_key]["img_per_s"], 2) for k, v in results.items()},
        "model": label, "batch_size": args.batch_size, "dtype": args.dtype, "device": str(device.type),
        "device_name": device_description(device),
        "num_parameters": num_parameters, "num_train_timesteps": num_train_timesteps,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
