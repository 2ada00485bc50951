#!/usr/bin/env python
"""hfgen's GPU suite: the speed figures the project needs from a GPU, in one command that fits a short device
session (--budget-minutes, default 8, wall-clock). Each measurement is one JSON line, appended to --output as
soon as it is done and printed; a measurement that fails writes a line with its "error" and the suite goes on.

    name                 what (the full suite; --quick runs the same names on tiny presets)
    ddpm_train           ddpm-cifar (35.7M UNet, 3x32x32 random images on the device), batch 128, bf16:
                         hfgen.training.train_step against the diffusers-example loop (train_throughput.py),
                         GFLOP/img, TFLOP/s, fraction of the GPU's dense bf16 peak, peak memory
    ddpm_train_compiled  the same at batch 512 with hfgen's model torch.compile'd
    ddpm_sample          sampling img/s of that net: DDPM 1000 steps, DPM-Solver++ 20, DDIM 50; batch 256, bf16
    vae_train            VAE `base` at its preset batch: hfgen's step, bf16, GFLOP/img, TFLOP/s, peak memory
    vae_memory           peak memory of one step with and without gradient checkpointing (train_memory.py)
    vae_train_compiled   vae_train with the model torch.compile'd
    hvae_train, hvae_memory, hvae_train_compiled   the same for the hierarchical VAE `base`
    hvae_fmnist          HVAE `base` trained on Fashion-MNIST for the minutes left, test bits/dim (ELBO)
    vae_fmnist           the same for the VAE `base`
    iw_bounds            only with --iw-folders: each carried VAE-family folder's ELBO and importance-weighted
                         bound with K=1000 (--iw-samples) over the whole Fashion-MNIST test split, fp32, TF32 off
    suite                the run itself: seconds, budget, names that failed

The measurements come in parts (ddpm_train, ddpm_sample, vae, hvae, hvae_fmnist, vae_fmnist). By default each
part runs in a process of its own, killed when it overruns its share of the budget; the two Fashion-MNIST runs
share whatever time the others left (skipped when too little is left). --quick (tiny presets, a few steps; runs in
the calling process) is what CI runs so that the suite cannot rot:

    python benchmarks/gpu_suite.py --output $OUT/gpu_suite.jsonl --fashion-mnist-dir .data/fashion-mnist
    python benchmarks/gpu_suite.py --device cpu --quick --output runs/gpu_suite_quick.jsonl

The K=1000 bounds of models trained elsewhere (minutes on a GPU, hours on a CPU) are a part of their own that runs
only when --iw-folders names folders. Each folder's evaluation keeps a progress file in the logs folder
(`iw_<folder>.progress.json`), so a run cut short continues where it stopped when the file is carried back:

    python benchmarks/gpu_suite.py --parts iw_bounds --iw-folders .device-folders/* --budget-minutes 6 \
        --output $OUT/gpu_suite.jsonl --fashion-mnist-dir .data/fashion-mnist

docs/benchmarks.md has the device command. Light imports at the top: the parent process never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent

#: dense bf16 TFLOP/s by a substring of the device name, first match wins (datasheets, without sparsity)
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))

#: part -> (share of the budget, or None for a Fashion-MNIST run that gets the time left; its measurements)
PARTS = {
    "ddpm_train": (0.33, ("ddpm_train", "ddpm_train_compiled")),
    "ddpm_sample": (0.12, ("ddpm_sample",)),
    "vae": (0.12, ("vae_train", "vae_memory", "vae_train_compiled")),  # compilation last: it may overrun
    "hvae": (0.18, ("hvae_train", "hvae_memory", "hvae_train_compiled")),
    "iw_bounds": (1.0, ("iw_bounds",)),  # only with --iw-folders: the time left but the Fashion-MNIST runs' minimum
    "hvae_fmnist": (None, ("hvae_fmnist",)),
    "vae_fmnist": (None, ("vae_fmnist",)),
}
SPEED_PARTS = [part for part in PARTS if part != "iw_bounds"]  # the default parts
FMNIST_OVERHEAD_S = 60  # start-up, data, final ELBO over the test split, samples and save of one training run
FMNIST_MIN_TRAIN_S = 30  # below this a Fashion-MNIST run is skipped
MARGIN_S = 15  # kept back from the budget for the last lines (not with --quick)

#: sizes of the full suite and of --quick
SIZES = {
    False: dict(ddpm_preset="ddpm-cifar", ddpm_batch=128, ddpm_compiled_batch=512, steps=50, compiled_steps=30,
                warmup_steps=5, num_images=4096, sample_batch=256, vae_preset="base", fmnist_eval=10000,
                fmnist_train_images=None, compile_backend="inductor"),
    True: dict(ddpm_preset="tiny", ddpm_batch=4, ddpm_compiled_batch=8, steps=2, compiled_steps=2, warmup_steps=1,
               num_images=32, sample_batch=2, vae_preset="tiny", fmnist_eval=64, fmnist_train_images=256,
               compile_backend="eager"),  # eager: dynamo traces the step, no code generation (seconds on a CPU)
}
IW_EVAL_IMAGES = {False: 0, True: 64}  # test images of iw_bounds (0: the whole split)


# ---------------------------------------------------------------------------------------------------- helpers
def peak_bf16_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def device_name(device: str) -> str:
    """The GPU's name without importing torch (nvidia-smi), or "cpu"."""
    if device == "cpu":
        return "cpu"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        return names[0].strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_line(path: Path, name: str, fields: dict, args) -> dict:
    """Append one measurement's JSON line to ``path`` and print it."""
    line = {"name": name, **fields}
    line.setdefault("device_name", device_name(args.device))
    line.update(device=args.device, quick=args.quick, torch=importlib.metadata.version("torch"),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(line)
    with open(path, "a") as out:
        out.write(text + "\n")
    print(text, flush=True)
    return line


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------- measurements
def _import_benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    return __import__(name)


def _precision(args) -> str:
    return "bf16" if args.device.startswith("cuda") else "no"


def _preset_batch(family: str, preset: str) -> int:
    from hfgen.families import FAMILIES_BY_PIPELINE

    family_class = next(cls for cls in FAMILIES_BY_PIPELINE.values() if cls.name == family)
    return family_class.presets[preset].training["train_batch_size"]


def train_speed(args, family: str, compiled: bool) -> dict:
    """img/s of hfgen's step (DDPM: against the baseline loop), GFLOP/img, TFLOP/s and fraction of peak."""
    train_throughput = _import_benchmark("train_throughput")
    sizes = SIZES[args.quick]
    if family == "ddpm":
        preset, batch = sizes["ddpm_preset"], sizes["ddpm_compiled_batch" if compiled else "ddpm_batch"]
        channels = 3
    else:
        preset, channels = sizes["vae_preset"], 1
        batch = _preset_batch(family, preset)
    settings = train_throughput.default_args(
        family=family, preset=preset, batch_size=batch, dataset="random", channels=channels,
        num_images=max(sizes["num_images"], 4 * batch), steps=sizes["compiled_steps" if compiled else "steps"],
        warmup_steps=sizes["warmup_steps"], rounds=1, device=args.device, mixed_precision=_precision(args),
        torch_compile=compiled, torch_compile_backend=sizes["compile_backend"])
    result = train_throughput.measure(settings)
    peak = peak_bf16_tflops(result["device_name"]) if result["mixed_precision"] == "bf16" else None
    result["peak_tflop_per_s"] = peak
    result["fraction_of_peak"] = round(result["tflop_per_s"] / peak, 4) if peak else None
    return result


def sample_speed(args) -> dict:
    """Sampling img/s of the DDPM net: DDPM over all T steps against DPM-Solver++ 20 and DDIM 50."""
    import torch

    from hfgen.devices import device_description

    sample_throughput = _import_benchmark("sample_throughput")
    sizes = SIZES[args.quick]
    dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    device = torch.device(args.device)
    pipeline, label = sample_throughput.build_pipeline(sizes["ddpm_preset"], None, 3, 32, device, dtype)
    runs = [("ddpm", pipeline.scheduler.config.num_train_timesteps), ("dpm-solver++", 20), ("ddim", 50)]
    results = sample_throughput.time_samplers(pipeline, runs, sizes["sample_batch"], device)
    img_per_s = {key: value["img_per_s"] for key, value in results.items()}
    ddpm_key = f"ddpm_{runs[0][1]}"
    return {"img_per_s": img_per_s,
            "speedup_vs_ddpm": {key: round(value / img_per_s[ddpm_key], 2) for key, value in img_per_s.items()},
            "model": label, "batch_size": sizes["sample_batch"], "dtype": dtype,
            "num_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
            "device_name": device_description(device)}


def memory(args, family: str) -> dict:
    """Peak memory of one step of the family's `base` at its preset batch, with and without checkpointing."""
    train_memory = _import_benchmark("train_memory")
    preset = SIZES[args.quick]["vae_preset"]
    settings = train_memory.build_arg_parser().parse_args(
        ["--family", family, "--preset", preset, "--batch-size", str(_preset_batch(family, preset)),
         "--device", args.device, "--mixed-precision", _precision(args)])
    return train_memory.measure(settings, in_process=args.quick)


def _fashion_mnist_folder(args) -> str:
    """The Fashion-MNIST IDX folder hfgen's data layer will read (--fashion-mnist-dir, else its default)."""
    from hfgen.data import FASHION_MNIST_DIR_ENV, fashion_mnist_dir

    if args.fashion_mnist_dir:
        os.environ[FASHION_MNIST_DIR_ENV] = str(Path(args.fashion_mnist_dir).resolve())
    folder = fashion_mnist_dir()
    if folder is None or not os.path.isdir(folder):
        raise FileNotFoundError(f"no Fashion-MNIST IDX folder ({folder}); give --fashion-mnist-dir")
    return folder


def fmnist_training(args, family_name: str) -> dict:
    """Train the family's `base` (tiny with --quick) on Fashion-MNIST for --fmnist-minutes; test bits/dim."""
    import tempfile

    from hfgen.families import FAMILIES_BY_PIPELINE
    from hfgen.training import build_parser, train

    folder = _fashion_mnist_folder(args)
    sizes = SIZES[args.quick]
    family = next(cls for cls in FAMILIES_BY_PIPELINE.values() if cls.name == family_name)()
    with tempfile.TemporaryDirectory() as output_dir:
        cli = ["--preset", sizes["vae_preset"], "--dataset", "fashion_mnist", "--output_dir", output_dir,
               "--mixed_precision", _precision(args), "--report_to", "none", "--eval_steps", "0",
               "--sample_steps", "0", "--checkpointing_steps", "0", "--num_sample_images", "16",
               "--final_eval_max_samples", str(sizes["fmnist_eval"]), "--final_importance_samples", "1"]
        if args.quick:
            cli += ["--max_train_steps", "3", "--max_train_samples", str(sizes["fmnist_train_images"])]
        else:
            cli += ["--max_train_steps", "10000000", "--max_train_minutes", f"{args.fmnist_minutes:.3f}"]
        metrics = train(family, build_parser(family).parse_args(cli))
    kept = {key: value for key, value in metrics.items() if isinstance(value, (int, float, str, bool))}
    kept.update(fashion_mnist_dir=folder, train_minutes_budget=None if args.quick else args.fmnist_minutes)
    kept["device_name"] = kept.pop("device", "cpu")
    return kept


def iw_bounds(args) -> dict:
    """ELBO and K-sample importance-weighted bound of each --iw-folders pipeline folder over the Fashion-MNIST test
    split (the whole split; its first 64 images with --quick), through `hfgen evaluate` on this device. The bound is
    computed in fp32 with TF32 off, as on a CPU; the noise differs from a CPU run's (another generator), not the
    estimate's expectation. Progress files beside the logs make an evaluation cut short resume."""
    import io

    import torch

    from hfgen.cli import main as hfgen_main
    from hfgen.devices import device_description

    if not args.iw_folders:
        raise ValueError("iw_bounds evaluates the folders named by --iw-folders, and none were given")
    data_folder = _fashion_mnist_folder(args)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    output = Path(args.output)
    results = {}
    for folder in args.iw_folders:
        name = Path(folder).resolve().name
        progress = output.parent / f"{output.stem}_logs" / f"iw_{name}.progress.json"
        started = time.monotonic()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            hfgen_main(["evaluate", folder, "--split", "test", "--importance-samples", str(args.iw_samples),
                        "--max-samples", str(IW_EVAL_IMAGES[args.quick]), "--device", args.device,
                        "--progress-file", str(progress)])
        metrics = json.loads(printed.getvalue().strip().splitlines()[-1])
        metrics["seconds"] = round(time.monotonic() - started, 1)
        results[name] = metrics
    return {"folders": results, "fashion_mnist_dir": data_folder, "importance_samples": args.iw_samples,
            "device_name": device_description(args.device)}


MEASUREMENTS = {
    "ddpm_train": lambda args: train_speed(args, "ddpm", compiled=False),
    "ddpm_train_compiled": lambda args: train_speed(args, "ddpm", compiled=True),
    "ddpm_sample": sample_speed,
    "vae_train": lambda args: train_speed(args, "vae", compiled=False),
    "vae_train_compiled": lambda args: train_speed(args, "vae", compiled=True),
    "vae_memory": lambda args: memory(args, "vae"),
    "hvae_train": lambda args: train_speed(args, "hvae", compiled=False),
    "hvae_train_compiled": lambda args: train_speed(args, "hvae", compiled=True),
    "hvae_memory": lambda args: memory(args, "hvae"),
    "hvae_fmnist": lambda args: fmnist_training(args, "hvae"),
    "vae_fmnist": lambda args: fmnist_training(args, "vae"),
    "iw_bounds": iw_bounds,
}


def _fresh_state() -> None:
    """Between measurements in one process: Accelerate's singletons, compiled graphs, cached GPU memory."""
    import gc

    import torch
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part_here(part: str, args, log_path: Path) -> None:
    """Each measurement of ``part`` in this process (its own output into ``log_path``); failures become lines."""
    import traceback

    for name in PARTS[part][1]:
        started = time.monotonic()
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                fields, error = MEASUREMENTS[name](args), None
            except Exception as exc:  # noqa: BLE001 - the suite goes on
                traceback.print_exc()
                fields, error = {}, f"{type(exc).__name__}: {exc}"[-2000:]
            finally:
                _fresh_state()
        fields = {**fields, "seconds": round(time.monotonic() - started, 1)}
        write_line(Path(args.output), name, {**fields, "error": error} if error else fields, args)


# ---------------------------------------------------------------------------------------------------- the runner
def run_part_in_child(part: str, args, log_path: Path, limit_s: float) -> str | None:
    """``part`` in a child process of its own, killed (its whole process group) after ``limit_s``; returns why
    it did not finish, or None."""
    command = [sys.executable, __file__, "--part", part, "--device", args.device, "--output", args.output,
               "--fmnist-minutes", str(args.fmnist_minutes)] + (["--quick"] if args.quick else [])
    if args.fashion_mnist_dir:
        command += ["--fashion-mnist-dir", args.fashion_mnist_dir]
    if args.iw_folders:
        command += ["--iw-samples", str(args.iw_samples), "--iw-folders", *args.iw_folders]
    with open(log_path, "a") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return f"timed out after {limit_s:.0f} s (its share of the budget)"
    if child.returncode != 0:
        tail = log_path.read_text()[-1500:]
        return f"the part's process exited with {child.returncode}: ...{tail}"
    return None


def part_limit(part: str, parts: list[str], args, seconds_left: float) -> float:
    """Seconds ``part`` may take: its share of the budget (less what the Fashion-MNIST runs after it need at
    least), or for a Fashion-MNIST run its share of what is left (which also sets ``args.fmnist_minutes`` unless
    given)."""
    share = PARTS[part][0]
    if share is not None:  # leaving the Fashion-MNIST runs after it the least they need
        later_fmnist = [p for p in parts[parts.index(part) + 1:] if PARTS[p][0] is None]
        reserve = 0 if args.quick else len(later_fmnist) * (FMNIST_OVERHEAD_S + FMNIST_MIN_TRAIN_S)
        return min(share * args.budget_minutes * 60, seconds_left - reserve)
    fmnist_left = [p for p in parts[parts.index(part):] if PARTS[p][0] is None]
    limit = seconds_left / len(fmnist_left)
    if not args.quick and not args.fixed_fmnist_minutes:
        args.fmnist_minutes = max(0.0, (limit - FMNIST_OVERHEAD_S) / 60)
    return limit


def run_suite(args) -> list[dict]:
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    logs = output.parent / f"{output.stem}_logs"
    logs.mkdir(exist_ok=True)
    started, first_line = time.monotonic(), len(read_lines(output))  # the file is appended to, never cleared
    deadline = started + args.budget_minutes * 60 - (0 if args.quick else MARGIN_S)
    parts = args.parts or [part for part in PARTS if part in SPEED_PARTS or args.iw_folders]
    args.fixed_fmnist_minutes = args.fmnist_minutes is not None
    args.fmnist_minutes = args.fmnist_minutes or 0.0
    for part in parts:
        limit = part_limit(part, parts, args, deadline - time.monotonic())
        too_short = not args.quick and PARTS[part][0] is None and args.fmnist_minutes * 60 < FMNIST_MIN_TRAIN_S
        print(f"[gpu_suite] {part}: up to {limit:.0f} s", file=sys.stderr, flush=True)
        before = len(read_lines(output))
        if limit <= 1 or too_short:
            problem = f"skipped: {max(limit, 0):.0f} s left in the {args.budget_minutes:g}-minute budget"
        elif args.isolation == "process":
            problem = run_part_in_child(part, args, logs / f"{part}.log", limit)
        else:
            problem = run_part_here(part, args, logs / f"{part}.log")
        new_lines = read_lines(output)[before:]
        if args.isolation == "process":  # a child prints into its log: show its lines here
            for line in new_lines:
                print(json.dumps(line), flush=True)
        written = {line["name"] for line in new_lines}
        for name in PARTS[part][1]:
            if name not in written:
                write_line(output, name, {"error": problem or "no line written", "part": part}, args)
    errors = [line["name"] for line in read_lines(output)[first_line:] if line.get("error")]
    write_line(output, "suite", {"seconds": round(time.monotonic() - started, 1),
                                 "budget_minutes": args.budget_minutes, "parts": parts, "errors": errors}, args)
    return read_lines(output)[first_line:]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny presets and a few steps (CI)")
    parser.add_argument("--output", default="runs/gpu_suite.jsonl",
                        help="JSON lines are appended here; logs go to <stem>_logs/ beside it")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="wall-clock budget of the whole suite")
    parser.add_argument("--fashion-mnist-dir", default=None,
                        help="folder of the Fashion-MNIST IDX files (default: $HFGEN_FASHION_MNIST_DIR or "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--fmnist-minutes", type=float, default=None,
                        help="training minutes of each Fashion-MNIST run (default: what the budget leaves)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=None,
                        help="run only these parts (default: every part but iw_bounds, and iw_bounds too when "
                             "--iw-folders is given)")
    parser.add_argument("--iw-folders", nargs="+", default=[],
                        help="pipeline folders (VAE families) whose K-sample bounds iw_bounds measures")
    parser.add_argument("--iw-samples", type=int, default=None, help="K of iw_bounds (default 1000; 4 with --quick)")
    parser.add_argument("--isolation", choices=("process", "none"), default=None,
                        help="process: each part in a child process with a hard time limit (default); none: all in "
                             "this process (default with --quick)")
    parser.add_argument("--part", choices=list(PARTS), default=None, help=argparse.SUPPRESS)  # a child's part
    args = parser.parse_args(argv)
    args.iw_samples = args.iw_samples or (4 if args.quick else 1000)
    if args.isolation is None:
        args.isolation = "none" if args.quick else "process"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.part:  # a child of run_part_in_child: its measurements, in this process
        output = Path(args.output)
        run_part_here(args.part, args, output.parent / f"{output.stem}_logs" / f"{args.part}.log")
        return
    run_suite(args)


if __name__ == "__main__":
    main()
