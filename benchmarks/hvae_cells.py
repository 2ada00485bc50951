#!/usr/bin/env python
"""The hierarchical VAE's residual cell types side by side at one preset: parameters, MFLOP per image (forward +
backward of the training objective, torch.utils.flop_counter.FlopCounterMode: convolutions and matmuls) and img/s
of ``hfgen.training.train_step`` over a few steps (``train_throughput.measure`` with ``--cell_type``).

The FLOP counts are exact for the config; img/s from a handful of steps on a shared CPU are rough. Random uint8
images of the preset's shape (Fashion-MNIST: 1 x 32 x 32) are used: the step's cost does not depend on the pixels.
The last line is one JSON object (a list, one entry per cell type).

    OMP_NUM_THREADS=1 python benchmarks/hvae_cells.py --steps 3
    python benchmarks/hvae_cells.py --preset base --batch-size 128 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_throughput  # noqa: E402
from hfgen.families.hvae import HVAE_PRESETS  # noqa: E402
from hfgen.models.blocks import CELL_TYPES  # noqa: E402


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(HVAE_PRESETS))
    parser.add_argument("--cell-types", nargs="+", default=list(CELL_TYPES), choices=CELL_TYPES)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's train_batch_size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell type")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--sample-size", type=int, default=32)
    return parser


def measure(args) -> list[dict]:
    batch_size = args.batch_size or HVAE_PRESETS[args.preset].training["train_batch_size"]
    rows = []
    for cell_type in args.cell_types:
        settings = train_throughput.default_args(
            family="hvae", preset=args.preset, batch_size=batch_size, steps=args.steps,
            warmup_steps=args.warmup_steps, rounds=1, device=args.device, dataset="random", channels=args.channels,
            sample_size=args.sample_size, num_images=max(4 * batch_size, 64), no_baseline=True,
            train_args=f"--cell_type {cell_type}")
        with contextlib.redirect_stdout(io.StringIO()):  # measure's own lines; the table below says it all
            result = train_throughput.measure(settings)
        rows.append({"cell_type": cell_type, "num_parameters": result["num_parameters"],
                     "mflop_per_img": round(result["gflop_per_img"] * 1e3, 2),
                     "img_per_s": result["img_per_s_hfgen"], "steps": result["steps"], "batch_size": batch_size,
                     "preset": args.preset, "device": result["device"], "torch_threads": result["torch_threads"]})
        print(f"{cell_type:>18}: {result['num_parameters'] / 1e6:6.3f}M parameters, "
              f"{result['gflop_per_img'] * 1e3:8.1f} MFLOP per image (fwd + bwd), "
              f"{result['img_per_s_hfgen']:8.1f} img/s ({result['steps']} steps of batch {batch_size})", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    rows = measure(build_arg_parser().parse_args(argv))
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
