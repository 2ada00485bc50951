#!/usr/bin/env python
"""fd_fmnist of a trained DDPM folder's samples under swapped samplers and their settings (clip_sample,
timestep_spacing), against a split's reference features: how hfgen chose the defaults in
``hfgen.families.ddpm.SAMPLERS`` (on the validation split, never test). Prints one JSON line per setting.

    python benchmarks/sampler_settings.py runs/ddpm-a runs/ddpm-b --split validation --num-samples 1000 \
        --steps 20 50 --out runs/sampler_settings.jsonl
"""

import argparse
import itertools
import json
import time

import torch

from hfgen.families import load_pipeline
from hfgen.metrics import evaluate_samples, load_feature_net, reference_statistics

SETTINGS = {  # scheduler -> the (clip_sample, timestep_spacing) pairs compared
    "ddim": list(itertools.product((True, False), ("leading", "trailing"))),
    # DPM-Solver++ "clips" through its dynamic thresholding at sample_max_value=1 (hfgen.families.ddpm)
    "dpm-solver++": list(itertools.product((True, False), ("linspace", "leading", "trailing"))),
    # the ancestral sampler with fewer steps than T (the folder's clip_sample=True)
    "ddpm": [(True, "leading")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="trained DDPM pipeline folders")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--schedulers", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                        help="compare only the settings with (or without) clipping")
    parser.add_argument("--timestep-spacing", default=None, help="compare only the settings with this spacing")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()
    net = load_feature_net("fmnist", "cpu")
    reference = reference_statistics("fashion_mnist", args.split, net=net, show_progress=False)
    for folder in args.folders:
        pipeline, family = load_pipeline(folder, "cpu")
        pipeline.set_progress_bar_config(disable=True)
        for name, steps in itertools.product(args.schedulers, args.steps):
            for clip_sample, spacing in SETTINGS[name]:
                if args.clip_sample not in (None, clip_sample) or args.timestep_spacing not in (None, spacing):
                    continue
                started = time.perf_counter()
                figures = evaluate_samples(family, pipeline, reference, num_samples=args.num_samples,
                                           metrics=("fd",), batch_size=args.batch_size, net=net,
                                           show_progress=False, scheduler=name, steps=steps,
                                           clip_sample=clip_sample, timestep_spacing=spacing)
                line = json.dumps({"folder": folder, "scheduler": name, "steps": steps, "clip_sample": clip_sample,
                                   "timestep_spacing": spacing, "split": args.split, **figures,
                                   "seconds": time.perf_counter() - started, "threads": torch.get_num_threads()})
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
