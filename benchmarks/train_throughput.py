#!/usr/bin/env python
"""DDPM training throughput: hfgen's training step against the usual diffusers-example step, in one process, on
the same network, batch size and device.

(a) baseline, per step what diffusers' examples/unconditional_image_generation/train_unconditional.py does: fp32
    master weights under Accelerate's autocast, a torch DataLoader whose dataset applies per-image PIL transforms
    (resize, random horizontal flip, to-tensor and normalise, here with PIL + numpy), noise and timesteps, the
    scheduler's add_noise, MSE, backward, clip_grad_norm_, optimizer step, an LR-scheduler step
    (diffusers.optimization.get_scheduler), an EMA step (EMAModel defaults) and loss.item() for the logs.
(b) hfgen: ``hfgen.training.train_step``, the very function ``train`` calls each step (whole split as a uint8
    tensor on the device, channels_last, fused AdamW, foreach EMA, one host sync per step).

Prints img/s for each and their ratio, FLOPs per image (fwd + bwd, torch.utils.flop_counter) and achieved
TFLOP/s of the hfgen step; the last line is one JSON object. ``--dataset random`` trains on random uint8 images
(``--channels``, default 3: CIFAR-shaped); throughput does not depend on the pixel values. ``--family vae|hvae``
times hfgen's step alone (the baseline loop is DDPM's). ``--train-args`` passes flags on to the family's training
parser, e.g. model overrides. ``measure()`` is what benchmarks/gpu_suite.py and benchmarks/hvae_cells.py call.

    python benchmarks/train_throughput.py --preset small --batch-size 64 --steps 20 --device cpu
    python benchmarks/train_throughput.py --preset ddpm-cifar --batch-size 128 --steps 50 --device cuda --mixed-precision bf16
    python benchmarks/train_throughput.py --preset ddpm-cifar --dataset random --batch-size 512 --steps 30 \
        --device cuda --mixed-precision bf16 --torch-compile
    python benchmarks/train_throughput.py --family hvae --preset base --batch-size 128 --device cuda --mixed-precision bf16
    python benchmarks/train_throughput.py --family hvae --preset small --batch-size 16 --steps 5 --device cpu \
        --dataset random --channels 1 --train-args="--cell_type bottleneck"
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shlex
import types
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfgen.data import images_to_uint8, load_image_dataset  # noqa: E402
from hfgen.devices import device_description  # noqa: E402
from hfgen.families import FAMILIES_BY_PIPELINE  # noqa: E402
from hfgen.training import BatchSchedule, build_optimizer_and_ema, build_parser, resolve_config, train_step  # noqa: E402


class PILTransformDataset(torch.utils.data.Dataset):
    """Images decoded (PNG, as a Hub image dataset stores them) and transformed one at a time, as a torchvision
    Compose would: Resize (bilinear), RandomHorizontalFlip, ToTensor ([0, 1], CHW) and Normalize(0.5, 0.5)."""

    def __init__(self, png_bytes: list[bytes], size: int, mode: str):
        self.png_bytes, self.size, self.mode = png_bytes, size, mode

    def __len__(self):
        return len(self.png_bytes)

    def __getitem__(self, index):
        image = PIL.Image.open(io.BytesIO(self.png_bytes[index])).convert(self.mode)
        image = image.resize((self.size, self.size), PIL.Image.BILINEAR)
        if random.random() < 0.5:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy((array.transpose(2, 0, 1) - 0.5) / 0.5)


FAMILIES = {cls.name: cls for cls in FAMILIES_BY_PIPELINE.values()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # process peak RSS (KiB on Linux)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="ddpm", choices=sorted(FAMILIES),
                        help="ddpm: hfgen's step against the baseline loop; vae, hvae: hfgen's step alone")
    parser.add_argument("--preset", default="small", help="a preset of --family")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per path and round")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; each runs every path for --steps steps in turn (the ratio's spread is over "
                             "rounds)")
    parser.add_argument("--objective", choices=("both", "preset", "plain"), default="both",
                        help="DDPM: time the preset's objective, the plain one of diffusers' example (epsilon MSE, "
                             "fixed variances), or both (a preset that is already plain has one)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--num-images", type=int, default=4096, help="training images to load")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the baseline")
    parser.add_argument("--no-baseline", action="store_true", help="time hfgen's step alone")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile hfgen's model")
    parser.add_argument("--torch-compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                        default="default", help="torch.compile mode (reduce-overhead: CUDA graphs on GPUs)")
    parser.add_argument("--torch-compile-backend", default="inductor",
                        help="torch.compile backend (eager: trace only, for quick checks)")
    parser.add_argument("--dataset", default="fashion_mnist", help="a --dataset of the training scripts, or random")
    parser.add_argument("--channels", type=int, default=None, help="image channels (random data: default 3)")
    parser.add_argument("--sample-size", type=int, default=32)
    parser.add_argument("--train-args", default="",
                        help='more flags for the family\'s training parser, one quoted string, e.g. '
                             '--train-args="--cell_type bottleneck" (the preset\'s values otherwise)')
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.preset not in FAMILIES[args.family].presets:
        parser.error(f"--preset {args.preset!r}: the {args.family} family has {sorted(FAMILIES[args.family].presets)}")
    return args


def default_args(**overrides) -> argparse.Namespace:
    """The CLI's defaults with ``overrides`` (keyword names as the attributes: batch_size=..., torch_compile=...)."""
    args = build_arg_parser().parse_args([])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    return types.SimpleNamespace(**{**vars(args), **overrides})


def load_uint8(args) -> torch.Tensor:
    """The training images as a uint8 tensor (N, C, H, W): random ones, or the first --num-images of a dataset."""
    if args.dataset == "random":
        shape = (args.num_images, args.channels or 3, args.sample_size, args.sample_size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = load_image_dataset(args.dataset, "train")
    dataset = dataset.select(range(min(args.num_images, len(dataset))))
    return images_to_uint8(dataset, sample_size=args.sample_size, channels=args.channels, show_progress=False)


def example_hybrid_vlb_term(scheduler, prediction, variance_output, clean, noisy, timesteps):
    """The L_vlb term of each image at its timestep (nats), as a user extending the diffusers example to learned
    variances writes it (Nichol & Dhariwal's formulas over the scheduler's ``betas``; the mean's gradient stopped):
    the KL of the reverse step for t >= 1, a discretized Gaussian decoder (8-bit bins, CDFs clamped at 1e-12) at
    t = 0, both computed for every image and one of them kept."""
    betas = scheduler.betas.to(clean.device, torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    log_posterior_variance = torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log()

    def at(table):
        return table[timesteps].float().view(-1, 1, 1, 1)

    prediction = prediction.detach()
    if scheduler.config.prediction_type == "v_prediction":
        x0_hat = at(alphas_cumprod.sqrt()) * noisy - at((1.0 - alphas_cumprod).sqrt()) * prediction
    else:
        x0_hat = (noisy - at((1.0 - alphas_cumprod).sqrt()) * prediction) / at(alphas_cumprod.sqrt())
    if scheduler.config.clip_sample:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    coef_x0 = at(betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod))
    coef_xt = at((1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod))
    model_mean = coef_x0 * x0_hat + coef_xt * noisy
    frac = (variance_output + 1.0) / 2.0
    model_log_variance = frac * at(betas.log()) + (1.0 - frac) * at(log_posterior_variance)
    true_mean, true_log_variance = coef_x0 * clean + coef_xt * noisy, at(log_posterior_variance)
    kl = 0.5 * (-1.0 + model_log_variance - true_log_variance + torch.exp(true_log_variance - model_log_variance)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_log_variance))
    inv_std, centred = torch.exp(-0.5 * model_log_variance), clean - model_mean
    cdf_plus = torch.special.ndtr(inv_std * (centred + 1.0 / 255.0))
    cdf_minus = torch.special.ndtr(inv_std * (centred - 1.0 / 255.0))
    log_mass = torch.where(clean < -0.999, cdf_plus.clamp(min=1e-12).log(),
                           torch.where(clean > 0.999, (1.0 - cdf_minus).clamp(min=1e-12).log(),
                                       (cdf_plus - cdf_minus).clamp(min=1e-12).log()))
    return torch.where(timesteps == 0, -log_mass.flatten(1).sum(1), kl.flatten(1).sum(1))


def example_loss(scheduler, model_output, clean, noise, noisy, timesteps, vlb_weight=0.001):
    """The baseline's objective. The diffusers example's: the MSE of the prediction against its target (noise for
    ``epsilon``, ``scheduler.get_velocity`` for ``v_prediction``); with ``learned_range`` variances (output
    channels split in two) plus ``vlb_weight * T`` times the mean per-dimension L_vlb term
    (``example_hybrid_vlb_term``), the hybrid objective that hfgen's ``learned_range`` trains."""
    config = scheduler.config
    learned_variance = config.variance_type == "learned_range"
    prediction, variance_output = model_output.float().chunk(2, dim=1) if learned_variance else (
        model_output.float(), None)
    target = scheduler.get_velocity(clean, noise, timesteps) if config.prediction_type == "v_prediction" else noise
    loss = F.mse_loss(prediction, target)
    if learned_variance:
        term_nats = example_hybrid_vlb_term(scheduler, prediction, variance_output, clean, noisy, timesteps)
        loss = loss + vlb_weight * config.num_train_timesteps * (term_nats / clean[0].numel()).mean()
    return loss


def describe_objective(model_config: dict) -> str:
    """What a model config trains, in words: prediction type and variances."""
    variance = model_config.get("variance_type", "fixed_small")
    hybrid = " + 0.001 T L_vlb term (hybrid)" if variance == "learned_range" else ""
    return f"{model_config.get('prediction_type', 'epsilon')} MSE{hybrid}, {variance} variances"


def build_baseline_step(family, cfg, model_config, uint8, accelerator, batch_size, num_workers):
    """(a): the diffusers example's step (see the module docstring) with ``example_loss`` for the model config's
    objective; returns (step function, release function)."""
    device = accelerator.device
    channels, sample_size = uint8.shape[1], uint8.shape[-1]
    torch.manual_seed(0)
    base_model = family.build_model(model_config, channels, sample_size)
    noise_scheduler = family.scheduler
    num_timesteps = noise_scheduler.config.num_train_timesteps
    vlb_weight = 0.001 if getattr(cfg, "vlb_weight", None) is None else cfg.vlb_weight
    base_opt = torch.optim.AdamW(base_model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                 weight_decay=0.0, eps=1e-8)
    png_bytes = []
    for i in range(uint8.shape[0]):  # the same images, re-encoded as PNG files
        buffer = io.BytesIO()
        array = uint8[i].permute(1, 2, 0).numpy()
        PIL.Image.fromarray(array[:, :, 0] if channels == 1 else array).save(buffer, format="PNG")
        png_bytes.append(buffer.getvalue())
    mode = "L" if channels == 1 else "RGB"
    loader = torch.utils.data.DataLoader(PILTransformDataset(png_bytes, sample_size, mode),
                                         batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                         drop_last=True)
    lr_sched = get_scheduler("cosine", optimizer=base_opt, num_warmup_steps=10, num_training_steps=100000)
    base_ema = EMAModel(base_model.parameters(), decay=0.9999, model_cls=type(base_model),
                        model_config=base_model.config)
    base_model, base_opt, loader, lr_sched = accelerator.prepare(base_model, base_opt, loader, lr_sched)
    base_ema.to(device)

    def batches_forever():
        while True:
            yield from loader

    batch_iter = batches_forever()

    def baseline_step():
        clean = next(batch_iter)
        noise = torch.randn(clean.shape, device=clean.device)
        timesteps = torch.randint(0, num_timesteps, (clean.shape[0],), device=clean.device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with accelerator.accumulate(base_model):
            with accelerator.autocast():
                model_output = base_model(noisy, timesteps).sample
            loss = example_loss(noise_scheduler, model_output, clean, noise, noisy, timesteps, vlb_weight)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(base_model.parameters(), 1.0)
            base_opt.step()
            lr_sched.step()
            base_opt.zero_grad()
        if accelerator.sync_gradients:
            base_ema.step(base_model.parameters())
        return loss.detach().item()

    def release():
        nonlocal base_model, base_opt, base_ema, loader, lr_sched
        del base_model, base_opt, base_ema, loader, lr_sched
        accelerator.free_memory()  # the Accelerator holds references to everything it prepared

    return baseline_step, release


def build_hfgen_step(family, cfg, model_config, uint8, accelerator, args):
    """(b): hfgen's ``train_step`` as ``train`` runs it; returns (step function, eager model, optimizer)."""
    device = accelerator.device
    torch.manual_seed(0)
    model = family.build_model(model_config, uint8.shape[1], uint8.shape[-1])
    model.to(memory_format=torch.channels_last)
    optimizer, ema = build_optimizer_and_ema(model, cfg, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.to(device)
    if args.torch_compile:
        model = torch.compile(model, mode=args.torch_compile_mode, backend=args.torch_compile_backend)
    train_images = uint8.to(device)
    schedule = BatchSchedule(train_images.shape[0], args.batch_size, cfg.seed, 0, 1)
    counter = {"step": 0}

    def hfgen_step():
        train_step(family, model, optimizer, accelerator, cfg, train_images, schedule, counter["step"],
                   cfg.learning_rate, ema=ema, ema_model=unwrapped)
        counter["step"] += 1

    return hfgen_step, unwrapped, optimizer


def run_steps(step_fn, steps, device) -> float:
    """Seconds that ``steps`` calls of ``step_fn`` take, the device synchronised before and after."""
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(device)
    return time.perf_counter() - started


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward, grouped (depthwise) ones included: each multiply-add of the forward has
    one in the input gradient and one in the weight gradient, so each requested gradient costs the forward's FLOPs.
    (torch's own formula, up to at least 2.13, counts a grouped conv's weight gradient as if the conv were dense,
    ``groups`` times too many: 96x for a depthwise conv over 96 channels.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def gflop_per_image(family, model, optimizer, accelerator, cfg, images) -> float:
    """GFLOP of one forward + backward of the family's objective per image (eager model; matmuls, convolutions,
    grouped convolutions' backward counted as ``_conv_backward_flop`` says)."""
    flop_counter = FlopCounterMode(display=False,
                                   custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with flop_counter:
        with accelerator.autocast():
            loss, _ = family.loss(model, images, 0, torch.Generator(device=images.device).manual_seed(0), cfg)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    return flop_counter.get_total_flops() / images.shape[0] / 1e9


#: the objectives timed: the preset's own, and the plain one of diffusers' example (epsilon, fixed variances)
PLAIN_OBJECTIVE = {"prediction_type": "epsilon", "variance_type": "fixed_small"}


def objectives(family_name: str, model_config: dict, objective: str) -> list[tuple[str, list[str]]]:
    """``(label, extra training-script flags)`` per objective to time: ``"preset"`` (the preset's own, i.e.
    ``model_config``'s) and, for a DDPM whose objective is not already the plain one, ``"plain"``
    (``PLAIN_OBJECTIVE``)."""
    chosen = [("preset", [])]
    is_plain = all(model_config.get(key, default) == default for key, default in PLAIN_OBJECTIVE.items())
    if family_name == "ddpm" and not is_plain:
        chosen.append(("plain", [flag for key, value in PLAIN_OBJECTIVE.items() for flag in (f"--{key}", value)]))
    return [(label, flags) for label, flags in chosen if objective in ("both", label)]


def _spread(values: list[float]) -> dict:
    values = sorted(values)
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"median": round(values[len(values) // 2] if len(values) % 2 else
                            (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2, 3),
            "min": round(values[0], 3), "max": round(values[-1], 3), "std": round(std, 3)}


def measure(args) -> dict:
    """Time hfgen's step and (DDPM, unless ``args.no_baseline``) the baseline loop on the same network, for the
    preset's objective and the plain one, interleaved: ``args.rounds`` rounds, each running every path for
    ``args.steps`` steps in turn, so that a busy machine's load changes fall on all paths alike. Returns the JSON
    object: throughputs over all rounds, the ratio hfgen / baseline per objective and its spread over rounds."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=args.mixed_precision)
    device = accelerator.device
    with_baseline = args.family == "ddpm" and not args.no_baseline
    cli = ["--output_dir", "unused", "--preset", args.preset, "--train_batch_size", str(args.batch_size),
           "--dataset", args.dataset, "--sample_size", str(args.sample_size), *shlex.split(args.train_args)]
    uint8 = load_uint8(args)
    paths, described = {}, {}  # path name -> step function; objective -> words
    hfgen_model = None
    _, preset_model_config = resolve_config(build_parser(FAMILIES[args.family]()).parse_args(cli),
                                            FAMILIES[args.family]())
    for objective, flags in objectives(args.family, preset_model_config, args.objective):
        family = FAMILIES[args.family]()
        cfg, model_config = resolve_config(build_parser(family).parse_args(cli + flags), family)
        described[objective] = describe_objective(model_config) if args.family == "ddpm" else args.family
        if with_baseline:
            paths[f"baseline/{objective}"], _ = build_baseline_step(family, cfg, model_config, uint8, accelerator,
                                                                     args.batch_size, args.num_workers)
        paths[f"hfgen/{objective}"], unwrapped, optimizer = build_hfgen_step(family, cfg, model_config, uint8,
                                                                            accelerator, args)
        if hfgen_model is None:
            hfgen_model = (family, unwrapped, optimizer, cfg)
    for step in paths.values():
        run_steps(step, args.warmup_steps, device)
    seconds = {name: [] for name in paths}
    peak_memory = {name: 0.0 for name in paths}
    for _ in range(args.rounds):
        for name, step in paths.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name].append(run_steps(step, args.steps, device))
            peak_memory[name] = max(peak_memory[name], _peak_memory_gb(device))
    timed_steps = args.steps * args.rounds
    img_per_s = {name: timed_steps * args.batch_size / sum(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        objective = name.split("/")[1]
        print(f"{name:<16} {img_per_s[name]:7.1f} img/s ({sum(values) / timed_steps * 1000:.1f} ms/step; "
              f"{described[objective]}; batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps)",
              flush=True)
    ratios = {}
    for objective in described:
        if with_baseline:
            per_round = [b / h for b, h in zip(seconds[f"baseline/{objective}"], seconds[f"hfgen/{objective}"])]
            ratios[objective] = (img_per_s[f"hfgen/{objective}"] / img_per_s[f"baseline/{objective}"],
                                 _spread(per_round))
            spread = ratios[objective][1]
            print(f"ratio hfgen / baseline, {objective} objective: {ratios[objective][0]:.3f}x over all rounds; "
                  f"per round median {spread['median']:.3f}, min {spread['min']:.3f}, max {spread['max']:.3f}, "
                  f"std {spread['std']:.3f}")

    family, unwrapped, optimizer, cfg = hfgen_model
    gflop = gflop_per_image(family, unwrapped, optimizer, accelerator, cfg, uint8[: args.batch_size].to(device))
    tflop_per_s = gflop * img_per_s["hfgen/preset"] / 1e3
    num_parameters = sum(p.numel() for p in unwrapped.parameters())
    memory_kind = "CUDA allocated, all paths resident" if device.type == "cuda" else "process RSS"
    print(f"{gflop:.3f} GFLOP per image (fwd + bwd), {tflop_per_s:.3f} TFLOP/s achieved by hfgen's step; "
          f"{num_parameters / 1e6:.2f}M parameters; peak memory {peak_memory['hfgen/preset']:.2f} GB ({memory_kind})")

    def rounded(value, digits):
        return None if value is None else round(value, digits)

    preset_ratio, preset_spread = ratios.get("preset", (None, None))
    plain_ratio, plain_spread = ratios.get("plain", (None, None))
    return {
        "img_per_s_hfgen": round(img_per_s["hfgen/preset"], 2),
        "img_per_s_baseline": rounded(img_per_s.get("baseline/preset"), 2),
        "ratio": rounded(preset_ratio, 3), "ratio_spread": preset_spread,
        "img_per_s_hfgen_plain": rounded(img_per_s.get("hfgen/plain"), 2),
        "img_per_s_baseline_plain": rounded(img_per_s.get("baseline/plain"), 2),
        "ratio_plain": rounded(plain_ratio, 3), "ratio_plain_spread": plain_spread,
        "objective": described["preset"], "plain_objective": described.get("plain"),
        "gflop_per_img": round(gflop, 4), "tflop_per_s": round(tflop_per_s, 4),
        "peak_memory_gb": round(peak_memory["hfgen/preset"], 3),
        "peak_memory_gb_baseline": rounded(peak_memory.get("baseline/preset"), 3),
        "family": args.family, "preset": args.preset, "batch_size": args.batch_size, "steps": timed_steps,
        "rounds": args.rounds, "dataset": args.dataset, "channels": uint8.shape[1], "device": str(device.type),
        "device_name": device_description(device),
        "mixed_precision": args.mixed_precision, "torch_compile": args.torch_compile,
        "torch_compile_mode": args.torch_compile_mode if args.torch_compile else None,
        "num_parameters": num_parameters, "torch_threads": torch.get_num_threads(),
        "train_args": args.train_args, "model_config": preset_model_config,
    }


def main(argv=None) -> dict:
    result = measure(parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
