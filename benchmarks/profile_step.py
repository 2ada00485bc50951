#!/usr/bin/env python
"""Where the milliseconds of a training step go: torch.profiler over ``hfgen.training.train_step`` (the function
``train`` runs each step), with the operators' self time grouped by kind (convolutions, normalisation,
activations, attention and linear layers, optimizer and EMA, the rest). Prints a table per family and one JSON
line each.

    OMP_NUM_THREADS=2 python benchmarks/profile_step.py --families vae hvae ddpm --preset small --steps 8

Shares are what to act on; absolute milliseconds move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import FAMILIES, build_hfgen_step, default_args, load_uint8, run_steps  # noqa: E402

from hfgen.training import build_parser, resolve_config  # noqa: E402

#: operator-name fragments -> group (first match wins; names are aten's, forward and backward alike)
GROUPS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("group norm", ("group_norm", "native_group_norm")),
    ("batch norm", ("batch_norm",)),
    ("activations (SiLU, ...)", ("silu", "gelu", "relu", "sigmoid", "softplus", "elu")),
    ("attention and linear", ("mm", "addmm", "bmm", "baddbmm", "softmax", "linear", "scaled_dot_product")),
    ("optimizer and EMA", ("_foreach", "adam", "lerp")),
    ("up/down-sampling", ("upsample", "interpolate", "pool", "avg_pool")),
    ("copies and layout", ("copy_", "contiguous", "clone", "to_copy", "_to_copy", "cat", "fill_", "zero_", "empty")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, fragments in GROUPS:
        if any(fragment in lowered for fragment in fragments):
            return group
    return "other (pointwise, reductions, likelihood)"


def profile_family(family_name: str, preset: str, batch_size: int, steps: int) -> dict:
    family = FAMILIES[family_name]()
    args = default_args(family=family_name, preset=preset, batch_size=batch_size, device="cpu", num_images=2048)
    accelerator = Accelerator(cpu=True)
    cli = ["--output_dir", "unused", "--preset", preset, "--train_batch_size", str(batch_size)]
    cfg, model_config = resolve_config(build_parser(family).parse_args(cli), family)
    uint8 = load_uint8(args)
    if family.scores_source_pixels:  # as the loop trains it on padded Fashion-MNIST: the 28x28 pixels scored
        model_config = {**model_config, "source_size": [28, 28]}
    step, _, _ = build_hfgen_step(family, cfg, model_config, uint8, accelerator, args)
    run_steps(step, 3, torch.device("cpu"))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = run_steps(step, steps, torch.device("cpu"))
    per_group: dict[str, float] = defaultdict(float)
    top: list[tuple[str, float]] = []
    for event in prof.key_averages():
        self_ms = event.self_cpu_time_total / 1e3 / steps
        per_group[group_of(event.key)] += self_ms
        top.append((event.key, self_ms))
    total = sum(per_group.values())
    print(f"\n{family_name} ({preset}), batch {batch_size}: {seconds / steps * 1e3:.0f} ms/step wall, "
          f"{batch_size * steps / seconds:.0f} img/s, {torch.get_num_threads()} threads (profiled)")
    for group, ms in sorted(per_group.items(), key=lambda item: -item[1]):
        print(f"  {group:<42} {ms:8.1f} ms/step  {100 * ms / total:5.1f}%")
    print("  top operators: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in sorted(top, key=lambda t: -t[1])[:6]))
    return {"family": family_name, "preset": preset, "batch_size": batch_size, "steps": steps,
            "ms_per_step": round(seconds / steps * 1e3, 1), "img_per_s": round(batch_size * steps / seconds, 1),
            "threads": torch.get_num_threads(),
            "share": {group: round(ms / total, 4) for group, ms in per_group.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["vae", "hvae", "ddpm"], choices=sorted(FAMILIES))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    for name in args.families:
        print(json.dumps(profile_family(name, args.preset, args.batch_size, args.steps)), flush=True)


if __name__ == "__main__":
    main()
