#!/usr/bin/env python
"""Classifier-free guidance of a class-conditional DDPM folder: per guidance scale, the class accuracy of its
samples in hfgen's Fashion-MNIST classifier, fd_fmnist of all of them and the mean of the per-class fd_fmnist,
against a split's real images (``hfgen.metrics.class_conditional``). Prints one JSON line per scale and, with
``--plot``, draws both against the scale (needs matplotlib: ``pip install hfgen[report]``).

    python benchmarks/guidance_sweep.py runs/cond/ddpm --split validation --scales 0 1 2 4 \
        --samples-per-class 100 --scheduler dpm-solver++ --steps 20 --out sweep.jsonl --plot guidance.png

Guidance scale s follows diffusers: eps = eps_null + s (eps_y - eps_null); 0 is the unconditional model, 1 the
conditional one (Ho & Salimans' w is s - 1).
"""

import argparse
import json
import time

from hfgen.data import class_labels, images_to_uint8, load_image_dataset
from hfgen.families import load_pipeline
from hfgen.metrics import class_conditional_quality, load_feature_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a class-conditional DDPM pipeline folder")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--scheduler", default="dpm-solver++")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                        help="clip the sampler's x_0 predictions to [-1, 1] (default: the sampler's; docs/ddpm.md)")
    parser.add_argument("--guidance-rescale", type=float, default=None,
                        help="0..1: rescale each guided prediction to the conditional one's spread (Lin et al. "
                             "2023; default: the pipeline's, 0)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--plot", default=None, help="a PNG of class accuracy and fd_fmnist against the scale")
    args = parser.parse_args()
    pipeline, family = load_pipeline(args.folder, "cpu")
    pipeline.set_progress_bar_config(disable=True)
    dataset = load_image_dataset("fashion_mnist", args.split)
    labels, names = class_labels(dataset)
    images = images_to_uint8(dataset, sample_size=32, channels=1, show_progress=False)
    net = load_feature_net("fmnist", "cpu")
    rows = []
    for index, scale in enumerate(args.scales):
        started = time.perf_counter()
        figures = class_conditional_quality(
            family, pipeline, net, images, labels, names, samples_per_class=args.samples_per_class,
            null_class_samples=args.samples_per_class if index == 0 else 0, batch_size=args.batch_size,
            seed=args.seed, show_progress=False, scheduler=args.scheduler, steps=args.steps, guidance_scale=scale,
            clip_sample=args.clip_sample, guidance_rescale=args.guidance_rescale)  # None: the defaults
        row = {"folder": args.folder, "split": args.split, "guidance_scale": scale, "scheduler": args.scheduler,
               "clip_sample": args.clip_sample, "guidance_rescale": args.guidance_rescale,
               "steps": args.steps, "seconds": round(time.perf_counter() - started, 1), **figures}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as file:
                file.write(line + "\n")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [row["guidance_scale"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(scales, [100 * row["class_accuracy"] for row in rows], "o-")
    left.axhline(100 * rows[0]["classifier_accuracy_on_real"], color="grey", linestyle="--",
                 label="classifier on real images")
    left.set(xlabel="guidance scale s", ylabel="class accuracy of samples (%)", xticks=scales)
    left.legend(loc="lower right", fontsize=8)
    right.plot(scales, [row["fd_fmnist"] for row in rows], "o-", label="all classes")
    right.plot(scales, [row["fd_fmnist_class_mean"] for row in rows], "s--", label="per class, mean")
    right.set(xlabel="guidance scale s", ylabel="fd_fmnist (lower is better)", xticks=scales)
    right.legend(fontsize=8)
    n = rows[0]["samples_per_class"]
    fig.suptitle(f"class-conditional DDPM, {rows[0]['scheduler']} {rows[0]['steps']} steps, {n} samples per class, "
                 f"vs {rows[0]['split']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
