#!/usr/bin/env python
"""Peak memory of one training step (forward + backward of the family's loss), with and without gradient
checkpointing, for any family and preset.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` above the memory held before the step (weights,
gradients of a previous step excluded); on CPU each variant runs in a fresh process and the figure is the rise of
the process's peak resident set size (``ru_maxrss``) over its size just before the step, which counts the
activations the backward pass keeps plus the allocator's slack. Random uint8 images: memory does not depend on
the pixel values.

    python benchmarks/train_memory.py --family hvae --preset base --batch-size 32 --device cpu
    python benchmarks/train_memory.py --family hvae --preset base --batch-size 128 --device cuda --mixed-precision bf16

The last line printed is one JSON object: ``peak_step_memory_gb`` and ``peak_step_memory_gb_checkpointed`` (GB,
10^9 bytes), their ratio, and the settings. ``measure`` is what benchmarks/gpu_suite.py calls.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hfgen.families import FAMILIES_BY_PIPELINE  # noqa: E402
from hfgen.training.arguments import build_parser, resolve_config  # noqa: E402

FAMILIES = {family.name: family for family in (cls() for cls in FAMILIES_BY_PIPELINE.values())}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure_step(args, checkpointing: bool) -> float:
    """Peak memory (bytes) that one forward + backward adds to what the process held before it."""
    family = FAMILIES[args.family]
    device = torch.device(args.device)
    cli = ["--output_dir", "unused", "--preset", args.preset, "--train_batch_size", str(args.batch_size),
           "--sample_size", str(args.sample_size)]
    cfg, model_config = resolve_config(build_parser(family).parse_args(cli), family)
    torch.manual_seed(0)
    model = family.build_model(model_config, args.channels, args.sample_size).to(device)
    model.to(memory_format=torch.channels_last).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    images = torch.randint(0, 256, (args.batch_size, args.channels, args.sample_size, args.sample_size),
                           dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = family.loss(model, images, cfg.max_train_steps, generator, cfg)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="hvae")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--one", choices=("plain", "checkpointed"), default=None,
                        help="measure one variant in this process and print its bytes (used for CPU runs)")
    return parser


def _child_argv(args, variant: str) -> list[str]:
    return ["--family", args.family, "--preset", args.preset, "--batch-size", str(args.batch_size),
            "--sample-size", str(args.sample_size), "--channels", str(args.channels), "--device", args.device,
            "--mixed-precision", args.mixed_precision, "--one", variant]


def measure(args, in_process: bool = False) -> dict:
    """Both variants; on a CPU each in a fresh process unless ``in_process`` (then the second variant's rise of
    the process peak is understated: a rough figure, for quick checks). Returns the JSON object."""
    figures = {}
    for variant in ("plain", "checkpointed"):
        if args.device.startswith("cuda") or in_process:
            figures[variant] = measure_step(args, checkpointing=variant == "checkpointed")
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        else:  # a fresh process per variant: ru_maxrss never goes down
            run = subprocess.run([sys.executable, __file__, *_child_argv(args, variant)], capture_output=True,
                                 text=True)
            if run.returncode != 0:
                raise RuntimeError(f"the {variant} measurement failed:\n{run.stderr[-3000:]}")
            figures[variant] = float(run.stdout.strip().splitlines()[-1])
        print(f"{variant:>12}: {figures[variant] / 1e9:.3f} GB")
    return {
        "peak_step_memory_gb": round(figures["plain"] / 1e9, 4),
        "peak_step_memory_gb_checkpointed": round(figures["checkpointed"] / 1e9, 4),
        "checkpointed_over_plain": round(figures["checkpointed"] / max(figures["plain"], 1.0), 3),
        "family": args.family, "preset": args.preset, "batch_size": args.batch_size,
        "sample_size": args.sample_size, "channels": args.channels, "device": args.device,
        "mixed_precision": args.mixed_precision,
        "memory": ("cuda max_memory_allocated" if args.device.startswith("cuda") else
                   "process peak RSS rise" + (", same process (rough)" if in_process else ", fresh process")),
    }


def main(argv=None) -> dict | None:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.preset not in FAMILIES[args.family].presets:
        parser.error(f"--preset {args.preset!r}: the {args.family} family has {sorted(FAMILIES[args.family].presets)}")
    if args.one:
        print(measure_step(args, checkpointing=args.one == "checkpointed"))
        return None
    try:
        result = measure(args)
    except RuntimeError as error:
        sys.exit(str(error))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
