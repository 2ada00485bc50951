#!/usr/bin/env python
"""A markdown table and PNG plots comparing trained hfgen folders.

    python benchmarks/report.py runs/vae-small-cpu [runs/ddpm ...] --out docs/report --num-samples 10000
        [--num-samples-per-family ddpm=1000 --sampling-per-family ddpm:scheduler=dpm-solver++ ddpm:steps=20]
        [--samples-cache runs/report-samples]

docs/report/README.md holds the command that wrote the current report. Each row states its number of generated
images N and its sampler; fd_fmnist is biased by N, so rows compare only at equal N (the real-image rows,
``--real-baseline N ...``, show the floor at each N).

For each folder: the training figures of its metrics.json (family, parameters, device, time, images/s, test
bits/dim ELBO and IW), and the sample-quality figures measured here against the Fashion-MNIST test split
(fd_fmnist, kid_fmnist, precision/recall, sampling images/s on this machine). Writes to --out:

  README.md              the table, the command, and the plots below
  results.json           every figure, per folder (reused with --reuse instead of sampling again)
  samples.png            a grid of samples per folder, side by side
  bpd_vs_time.png        bits/dim against training wall-clock, from the tensorboard logs (DIR/logs)
  fd_vs_steps.png        DDPM folders only: fd_fmnist against sampling steps, one line per scheduler
                         (--ddpm-schedulers, --ddpm-steps, --ddpm-num-samples images per point)

A folder without weights (metrics.json only) gets its training figures and dashes. Needs matplotlib
(``pip install -e ".[report]"``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}


def scalar_series(folder: Path) -> dict[str, list[tuple[float, int, float]]]:
    """{tag: [(wall_time, step, value)]} from the tensorboard event files under folder/logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[float, int, float]]] = {}
    for events in sorted((folder / "logs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in series.items()}


def generated_images(family, pipeline, folder: Path, num_images: int, args, **options) -> tuple[torch.Tensor, float]:
    """``num_images`` samples (uint8) and the seconds sampling took; with ``--samples-cache DIR`` they are kept
    there (keyed by folder, weights, count, seed, batch size and options) and reused, so the figures can be
    recomputed, e.g. after the feature network changes, without sampling again."""
    from hfgen.metrics import generate_uint8

    path = None
    if args.samples_cache:
        weights = sorted(folder.resolve().glob("*/*.safetensors"))
        identity = json.dumps({"folder": str(folder.resolve()), "weights": [(str(w), w.stat().st_mtime_ns)
                                                                            for w in weights],
                               "num_images": num_images, "seed": args.seed, "batch_size": args.batch_size,
                               "options": options}, sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        path = args.samples_cache / f"{folder.resolve().name}-{num_images}-{digest}.safetensors"
        if path.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as handle:
                seconds = float(handle.metadata()["sample_seconds"])
            print(f"report: {folder.name}: {num_images} samples {options or ''} from {path}", file=sys.stderr)
            return load_file(str(path))["images"], seconds
    started = time.perf_counter()
    images = generate_uint8(family, pipeline, num_images, batch_size=args.batch_size, seed=args.seed, channels=1,
                            **options)
    seconds = time.perf_counter() - started
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": images.contiguous()}, str(path), metadata={"sample_seconds": str(seconds),
                                                                          "identity": identity})
    return images, seconds


def score(images: torch.Tensor, seconds: float, reference, net, args, metrics=("fd", "kid", "pr")) -> dict:
    from hfgen.metrics import extract_features, sample_quality

    out = sample_quality(extract_features(net, images, description="features (generated)"), reference, metrics,
                         seed=args.seed)
    out.update(num_generated=int(images.shape[0]), sample_seconds=seconds,
               sample_img_per_s=images.shape[0] / max(seconds, 1e-9), num_reference=int(reference.features.shape[0]))
    return out


def measure(folder: Path, args, reference, net) -> dict:
    from hfgen.families import load_pipeline
    from hfgen.metrics import generate_uint8

    device = torch.device(args.device) if args.device else torch.device("cpu")
    pipeline, family = load_pipeline(str(folder), device)
    family.model_of(pipeline).eval()
    num_samples = args.num_samples_per_family.get(family.name, args.num_samples)
    options = args.sampling_per_family.get(family.name, {})
    out = {"family": family.name, "sampling": options}
    out.update(score(*generated_images(family, pipeline, folder, num_samples, args, **options), reference, net, args))
    print(f"report: {folder.name}: fd_fmnist {out['fd_fmnist']:.2f} ({num_samples} images)", file=sys.stderr)
    grid = generate_uint8(family, pipeline, 64, batch_size=64, seed=args.seed + 1, show_progress=False, **options)
    save_grid(grid, args.out / f"grid-{folder.resolve().name}.png")
    if family.name == "ddpm":
        curve = {}
        for scheduler in args.ddpm_schedulers:
            for steps in args.ddpm_steps:
                try:
                    images, seconds = generated_images(family, pipeline, folder, args.ddpm_num_samples, args,
                                                       scheduler=scheduler, steps=steps)
                except (TypeError, ValueError) as error:
                    print(f"report: {folder}: scheduler {scheduler!r} with {steps} steps: {error}", file=sys.stderr)
                    break
                result = score(images, seconds, reference, net, args, metrics=("fd",))
                curve.setdefault(scheduler, []).append([steps, result["fd_fmnist"], result["sample_img_per_s"]])
                print(f"report: {folder.name}: {scheduler} {steps} steps: fd_fmnist {result['fd_fmnist']:.2f} "
                      f"({args.ddpm_num_samples} images, {result['sample_img_per_s']:.1f} img/s)", file=sys.stderr)
        out["fd_vs_steps"] = curve
        out["fd_vs_steps_num_samples"] = args.ddpm_num_samples
    return out


def fmt(value, spec=".3f", missing="–"):
    return missing if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    header = ("| folder | family (preset) | parameters | trained on | training time | train img/s | bits/dim ELBO | "
              "bits/dim IW (K) | images (N), sampler | fd_fmnist | KID | precision | recall | sampling img/s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        m, q = r["metrics"], r.get("quality", {})
        device = m.get("device", "?")
        if m.get("num_processes", 1) > 1:
            device = f"{m['num_processes']} x {device}"
        if m.get("mixed_precision") not in (None, "no"):
            device += f", {m['mixed_precision']}"
        kid = (f"{q['kid_fmnist']:.4f} ± {q['kid_fmnist_std']:.4f}" if "kid_fmnist" in q else "–")
        if r.get("real"):
            lines.append(f"| {r['name']} | real images | | | | | | | {q.get('num_generated', '?')} | "
                         f"{fmt(q.get('fd_fmnist'), '.2f')} | {kid} | "
                         f"{fmt(q.get('precision'))} | {fmt(q.get('recall'))} | |")
            continue
        lines.append(" | ".join([
            f"| `{r['name']}`", f"{m.get('family', q.get('family', '?'))} ({m.get('preset', '?')})",
            f"{m['num_parameters'] / 1e6:.2f}M" if "num_parameters" in m else "–", device,
            f"{m['train_seconds'] / 60:.1f} min, {m.get('train_steps', '?')} steps" if "train_seconds" in m else "–",
            fmt(m.get("train_img_per_s"), ".0f"), fmt(m.get("bits_per_dim_elbo")),
            f"{fmt(m.get('bits_per_dim_iw'))} ({m.get('importance_samples', '?')})", images_and_sampler(q),
            fmt(q.get("fd_fmnist"), ".2f"),
            kid, fmt(q.get("precision")), fmt(q.get("recall")), fmt(q.get("sample_img_per_s"), ".0f") + " |"]))
    return "\n".join(lines)


def images_and_sampler(quality: dict) -> str:
    if "num_generated" not in quality:
        return "–"
    options = quality.get("sampling") or {}
    if "scheduler" in options or "steps" in options:
        return f"{quality['num_generated']}, {options.get('scheduler', 'default')} {options.get('steps', '')} steps"
    extra = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"{quality['num_generated']}" + (f", {extra}" if extra else "")


def parse_per_family(values: list[str], flag: str) -> dict:
    """``FAMILY=N`` (``--num-samples-per-family``) or ``FAMILY:KEY=VALUE`` (``--sampling-per-family``) items."""
    out: dict = {}
    for item in values or []:
        if flag == "--num-samples-per-family":
            family, _, number = item.partition("=")
            if not family or not number.isdigit() or int(number) < 2:
                raise SystemExit(f"report: {flag} takes FAMILY=N with N >= 2 (e.g. ddpm=2000); got {item!r}")
            out[family] = int(number)
            continue
        family, _, setting = item.partition(":")
        key, _, value = setting.partition("=")
        if not family or not key or not value:
            raise SystemExit(f"report: {flag} takes FAMILY:KEY=VALUE (e.g. ddpm:steps=20); got {item!r}")
        for convert in (int, float, str):
            try:
                value = convert(value)
                break
            except ValueError:
                continue
        out.setdefault(family, {})[key] = value
    return out


def save_grid(images: torch.Tensor, path: Path) -> None:
    """uint8 (N, C, H, W) -> one PNG grid (square, row-major)."""
    import PIL.Image

    n, c, h, w = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = torch.zeros(c, rows * h, cols * w, dtype=torch.uint8)
    for i in range(n):
        y, x = divmod(i, cols)
        canvas[:, y * h:(y + 1) * h, x * w:(x + 1) * w] = images[i]
    array = canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).numpy()
    PIL.Image.fromarray(array).save(path)


def plot_samples(rows, out: Path, plt) -> bool:
    import numpy as np
    import PIL.Image

    grids = [(r["name"] if not r.get("real") else "Fashion-MNIST (real)", out / r.get("grid", f"grid-{r['name']}.png"))
             for r in rows if not r.get("real") or r.get("grid")]
    grids = [(name, np.asarray(PIL.Image.open(path))) for name, path in grids if path.is_file()]
    if not grids:
        return False
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.3), squeeze=False)
    for ax, (name, canvas) in zip(axes[0], grids):
        ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    _save_figure(fig, out / "samples.png", plt)
    return True


def _evaluation_curve_label(metrics: dict) -> str:
    """What the training-time evaluations of a run are: the split (``--eval_split``, validation by default, never the
    test split) and K. Folders written before metrics.json named K: the DDPM's were one-timestep estimates, the
    latent diffusion's 16 timesteps, the VAEs' the ELBO (K = 1)."""
    split = str(metrics.get("validation_split", "validation")).split("[")[0]
    k = metrics.get("validation_vlb_timesteps") or metrics.get("validation_importance_samples")
    if k is None:
        k = 16 if metrics.get("family") == "ldm" else 1
    if metrics.get("family") in ("ddpm", "ldm"):
        return f"{split} bound ({k} timestep{'s' if k != 1 else ''} per image)"
    return f"{split} ELBO" if k == 1 else f"{split} bound (K={k})"


def plot_bpd_vs_time(rows, out: Path, plt) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for index, r in enumerate(rows):
        series = r.get("series") or {}
        train = series.get("train/bits_per_dim", [])
        given_label = "eval/bits_per_dim_elbo_given_label" in series  # a class-conditional run's validation
        evals = series.get("eval/bits_per_dim_elbo_given_label" if given_label else "eval/bits_per_dim_elbo", [])
        if not train and not evals:
            continue
        start = min(s[0][0] for s in (train, evals) if s)
        color = f"C{index}"
        if train:
            ax.plot([(t - start) / 60 for t, _, _ in train], [v for _, _, v in train], color=color, alpha=0.35,
                    lw=1, label=f"{r['name']} train (batch)")
        if evals:
            ax.plot([(t - start) / 60 for t, _, _ in evals], [v for _, _, v in evals], "o-", color=color,
                    label=f"{r['name']} {_evaluation_curve_label(r.get('metrics') or {})}"
                          + (" given the label" if given_label else ""))
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("wall-clock since the first log entry (minutes; evaluation and checkpoints included)")
    ax.set_ylabel("bits/dim (ELBO bound)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 6))
    _save_figure(fig, out / "bpd_vs_time.png", plt, ax)
    return True


def _save_figure(fig, path: Path, plt, ax=None) -> None:
    """Write ``fig`` to ``path`` (PNG) and close it; a line plot's ``ax`` gets the report's grid and legend."""
    if ax is not None:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fd_vs_steps(rows, out: Path, plt) -> bool:
    curves = [(r["name"], r["quality"]["fd_vs_steps"]) for r in rows if r.get("quality", {}).get("fd_vs_steps")]
    if not curves:
        return False
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = set()
    for name, curve in curves:
        for scheduler, points in curve.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{name}: {scheduler}")
            steps.update(p[0] for p in points)
    ax.set_xscale("log")
    ax.set_xticks(sorted(steps))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    sizes = sorted({r["quality"]["fd_vs_steps_num_samples"] for r in rows if r.get("quality", {}).get("fd_vs_steps")})
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"fd_fmnist ({', '.join(map(str, sizes))} images per point)")
    _save_figure(fig, out / "fd_vs_steps.png", plt, ax)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/report"))
    parser.add_argument("--num-samples", type=int, default=10000, help="generated images per folder")
    parser.add_argument("--num-samples-per-family", nargs="+", default=[], metavar="FAMILY=N",
                        help="another image count for a family's folders, e.g. ddpm=2000 (sampling a DDPM on a CPU "
                             "is slow)")
    parser.add_argument("--sampling-per-family", nargs="+", default=[], metavar="FAMILY:KEY=VALUE",
                        help="sampling options of a family's main figures and grid, e.g. ddpm:scheduler=dpm-solver++ "
                             "ddpm:steps=20 or vae:temperature=0.9")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", help="Fashion-MNIST split of the reference features")
    parser.add_argument("--device", default=None, help="default: cpu")
    parser.add_argument("--ddpm-schedulers", nargs="+", default=["ddpm", "ddim"])
    parser.add_argument("--ddpm-steps", nargs="+", type=int, default=[10, 25, 50, 100, 250, 1000])
    parser.add_argument("--ddpm-num-samples", type=int, default=2000)
    parser.add_argument("--real-baseline", type=int, nargs="+", default=None,
                        help="score this many real training images as a 'model' too, the floor of each figure at "
                             "that N; several numbers give several rows (default: --num-samples; 0: off)")
    parser.add_argument("--samples-cache", type=Path, default=None,
                        help="keep generated images here and reuse them in later runs (same folder, weights, count, "
                             "seed, batch size and sampling options)")
    parser.add_argument("--notes", type=Path, default=None,
                        help="a markdown file appended to the README under 'Notes' (observations on these runs)")
    parser.add_argument("--reuse", action="store_true", help="reuse results.json figures of folders measured before")
    args = parser.parse_args(argv)
    args.num_samples_per_family = parse_per_family(args.num_samples_per_family, "--num-samples-per-family")
    args.sampling_per_family = parse_per_family(args.sampling_per_family, "--sampling-per-family")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hfgen.hub import conditional_metrics_layout
    from hfgen.metrics import load_feature_net, reference_statistics

    args.out.mkdir(parents=True, exist_ok=True)
    previous = read_json(args.out / "results.json") if args.reuse else {}
    net = reference = None
    rows = []
    for folder in args.folders:
        name = folder.resolve().name
        # a class-conditional folder's plain keys bound -log p(x) (older metrics.json files are read that way)
        row = {"name": name, "metrics": conditional_metrics_layout(read_json(folder / "metrics.json"))}
        if not row["metrics"]:
            print(f"report: {folder} has no metrics.json; skipped", file=sys.stderr)
            continue
        row["series"] = scalar_series(folder) if (folder / "logs").is_dir() else {}
        if args.reuse and previous.get(name, {}).get("quality"):
            row["quality"] = previous[name]["quality"]
        elif (folder / "model_index.json").is_file() and any(folder.glob("*/*.safetensors")):
            if reference is None:
                net = load_feature_net("fmnist")
                reference = reference_statistics("fashion_mnist", args.split, net=net)
            started = time.perf_counter()
            row["quality"] = measure(folder, args, reference, net)
            row["quality"]["measure_seconds"] = time.perf_counter() - started
        else:
            print(f"report: {folder} has no weights; training figures only", file=sys.stderr)
        rows.append(row)

    if args.real_baseline is None:
        args.real_baseline = [args.num_samples]
    real_counts = [n for n in args.real_baseline if n]
    if real_counts:
        from hfgen.data import images_to_uint8, load_image_dataset
        from hfgen.metrics import extract_features, sample_quality

        if reference is None:
            net = load_feature_net("fmnist")
            reference = reference_statistics("fashion_mnist", args.split, net=net)
        train_images = images_to_uint8(load_image_dataset("fashion_mnist", "train"), sample_size=32, channels=1,
                                       max_samples=max(real_counts))
        train_features = extract_features(net, train_images)
        test = images_to_uint8(load_image_dataset("fashion_mnist", args.split), sample_size=32, channels=1,
                               max_samples=64, show_progress=False)
        save_grid(test, args.out / f"grid-fashion_mnist-{args.split}.png")
        for position, count in enumerate(sorted(real_counts, reverse=True)):
            quality = sample_quality(train_features[:count], reference, seed=args.seed)
            quality["num_generated"] = count
            row = {"name": f"train split, first {count}", "metrics": {}, "quality": quality, "real": True}
            if position == 0:
                row["grid"] = f"grid-fashion_mnist-{args.split}.png"
            rows.insert(position, row)

    plots = {"samples.png": plot_samples(rows, args.out, plt), "bpd_vs_time.png": plot_bpd_vs_time(rows, args.out, plt),
             "fd_vs_steps.png": plot_fd_vs_steps(rows, args.out, plt)}
    results = {r["name"]: {"metrics": r["metrics"], "quality": r.get("quality")} for r in rows if not r.get("real")}
    results.update({r["name"]: {"real": True, "quality": r["quality"]} for r in rows if r.get("real")})
    (args.out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    command = "python benchmarks/report.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    from hfgen.devices import cpu_description

    cpu = f"{cpu_description()}, torch {torch.__version__}"
    text = [
        "# hfgen report", "",
        f"Generated by `{command}`.", "",
        table(rows), "",
        f"Sample quality: N generated images per folder (the column *images (N), sampler*; seed {args.seed}) "
        f"against the {args.split} split of Fashion-MNIST (all of it), in the features of hfgen's own "
        "Fashion-MNIST network "
        "(`hfgen.metrics.load_feature_net(\"fmnist\")`); fd_fmnist is a Fréchet distance in those features, not "
        "FID, and is not comparable with published FIDs. KID: unbiased polynomial-kernel MMD² over 100 subsets of "
        "1000 (mean ± std over subsets). Precision/recall: k-NN manifolds with k = 3 (Kynkäänniemi et al. 2019). "
        f"Sampling images/s measured here ({cpu}; the machine was shared). Training figures and bits/dim come "
        "from each folder's metrics.json (bits/dim over 32x32 padded images, not comparable with 28x28 figures). "
        "The *real images* rows score real training images the same way: the best a model can expect with that "
        "many images. **fd_fmnist is biased upwards by a finite N** (the fewer images, the larger; see the real "
        "rows), so compare fd_fmnist only between rows of equal N; KID is unbiased, and precision/recall depend "
        "on N through the k-NN radii.",
        "",
    ]
    curve_sizes = sorted({r["quality"]["fd_vs_steps_num_samples"] for r in rows
                          if r.get("quality", {}).get("fd_vs_steps_num_samples")})
    for file, caption in (("samples.png", "Samples (each folder's sampler in the table)"),
                          ("bpd_vs_time.png", "Bits/dim against training wall-clock"),
                          ("fd_vs_steps.png", "fd_fmnist against DDPM sampling steps")):
        if plots[file]:
            text += [f"## {caption}", "", f"![{caption}]({file})", ""]
    for r in rows:
        curve = r.get("quality", {}).get("fd_vs_steps")
        if curve:
            text += [f"fd_fmnist of `{r['name']}` against sampling steps "
                     f"({r['quality']['fd_vs_steps_num_samples']} images per point; sampling img/s in brackets):", "",
                     "| scheduler | " + " | ".join(f"{steps} steps" for steps in args.ddpm_steps) + " |",
                     "|---|" + "---|" * len(args.ddpm_steps)]
            for scheduler, points in curve.items():
                by_steps = {p[0]: f"{p[1]:.2f} ({p[2]:.1f})" for p in points}
                text.append(f"| {scheduler} | " + " | ".join(by_steps.get(steps, "–") for steps in args.ddpm_steps)
                            + " |")
            text.append("")
    if plots["fd_vs_steps.png"]:
        text += [f"Each point of the fd_fmnist-against-steps plot uses {', '.join(map(str, curve_sizes))} generated "
                 "images (seed " + str(args.seed) + "): compare its points with each other, not with the table's "
                 "fd_fmnist at another N.", ""]
    else:
        text += ["No DDPM folder was given, so there is no fd-against-sampling-steps plot.", ""]
    if args.notes:
        text += ["## Notes", "", args.notes.read_text().strip(), ""]
    (args.out / "README.md").write_text("\n".join(text))
    print(json.dumps({r["name"]: {k: r.get("quality", {}).get(k) for k in (
        "fd_fmnist", "kid_fmnist", "kid_fmnist_std", "precision", "recall", "sample_img_per_s")} for r in rows}))


if __name__ == "__main__":
    main()
