#!/usr/bin/env python
"""DDPM training throughput: hfgen's training step against the usual diffusers-example step, in one process, on
the same network, batch size and device.

(a) baseline, per step what diffusers' examples/unconditional_image_generation/train_unconditional.py does: fp32
    master weights under Accelerate's autocast, a torch DataLoader whose dataset applies per-image PIL transforms
    (resize, random horizontal flip, to-tensor and normalise, here with PIL + numpy), noise and timesteps, the
    scheduler's add_noise, MSE, backward, clip_grad_norm_, optimizer step, an LR-scheduler step
    (diffusers.optimization.get_scheduler), an EMA step (EMAModel defaults) and loss.item() for the logs.
(b) hfgen: ``hfgen.training.train_step``, the very function ``train`` calls each step (whole split as a uint8
    tensor on the device, channels_last, fused AdamW on CUDA, foreach EMA, one host sync per step).

Prints img/s for each and their ratio, FLOPs per image (fwd + bwd, torch.utils.flop_counter) and achieved
TFLOP/s of the hfgen step; the last line is one JSON object.

    python benchmarks/train_throughput.py --preset small --batch-size 64 --steps 20 --device cpu
    python benchmarks/train_throughput.py --preset ddpm-cifar --batch-size 128 --steps 50 --device cuda --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hfgen.data import images_to_uint8, load_image_dataset  # noqa: E402
from hfgen.families import DDPMFamily  # noqa: E402
from hfgen.training import BatchSchedule, build_parser, resolve_config, train_step  # noqa: E402


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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # process peak RSS (KiB on Linux)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(DDPMFamily.presets))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path (after --warmup-steps)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleave the two paths in this many rounds of steps/rounds steps each (for busy "
                             "CPUs; CUDA peak memory is then that of both paths together)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--num-images", type=int, default=4096, help="training images to load")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the baseline")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile hfgen's model")
    parser.add_argument("--torch-compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                        default="default", help="torch.compile mode (reduce-overhead: CUDA graphs on GPUs)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--sample-size", type=int, default=32)
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=args.mixed_precision)
    device = accelerator.device
    family = DDPMFamily()
    cli = ["--output_dir", "unused", "--preset", args.preset, "--train_batch_size", str(args.batch_size),
           "--dataset", args.dataset, "--sample_size", str(args.sample_size)]
    cfg, model_config = resolve_config(build_parser(family).parse_args(cli), family)
    dataset = load_image_dataset(args.dataset, "train")
    dataset = dataset.select(range(min(args.num_images, len(dataset))))
    uint8 = images_to_uint8(dataset, sample_size=args.sample_size, show_progress=False)
    channels = uint8.shape[1]

    # ------------------------------------------------------------------ (a) baseline
    torch.manual_seed(0)
    base_model = family.build_model(model_config, channels, args.sample_size)
    noise_scheduler = family.scheduler
    num_timesteps = noise_scheduler.config.num_train_timesteps
    base_opt = torch.optim.AdamW(base_model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                 weight_decay=0.0, eps=1e-8)
    png_bytes = []
    for i in range(uint8.shape[0]):  # the same images, re-encoded as PNG files
        buffer = io.BytesIO()
        array = uint8[i].permute(1, 2, 0).numpy()
        PIL.Image.fromarray(array[:, :, 0] if channels == 1 else array).save(buffer, format="PNG")
        png_bytes.append(buffer.getvalue())
    mode = "L" if channels == 1 else "RGB"
    loader = torch.utils.data.DataLoader(PILTransformDataset(png_bytes, args.sample_size, mode),
                                         batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
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
                prediction = base_model(noisy, timesteps).sample
            loss = F.mse_loss(prediction.float(), noise)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(base_model.parameters(), 1.0)
            base_opt.step()
            lr_sched.step()
            base_opt.zero_grad()
        if accelerator.sync_gradients:
            base_ema.step(base_model.parameters())
        return loss.detach().item()

    # ------------------------------------------------------------------ (b) hfgen's step
    def build_hfgen():
        torch.manual_seed(0)
        model = family.build_model(model_config, channels, args.sample_size)
        model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                                      eps=cfg.adam_epsilon, fused=device.type == "cuda")
        ema = EMAModel(model.parameters(), decay=cfg.ema_decay, foreach=True, model_cls=type(model),
                       model_config=model.config)
        model, optimizer = accelerator.prepare(model, optimizer)
        unwrapped = accelerator.unwrap_model(model)
        ema.to(device)
        if args.torch_compile:
            model = torch.compile(model, mode=args.torch_compile_mode)
        train_images = uint8.to(device)
        schedule = BatchSchedule(train_images.shape[0], args.batch_size, cfg.seed, 0, 1)
        counter = {"step": 0}

        def hfgen_step():
            train_step(family, model, optimizer, accelerator, cfg, train_images, schedule, counter["step"],
                       cfg.learning_rate, ema=ema, ema_model=unwrapped)
            counter["step"] += 1

        return model, optimizer, ema, unwrapped, hfgen_step

    def run(step_fn, steps):
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step_fn()
        _sync(device)
        return time.perf_counter() - started

    def report(label, seconds, steps):
        img_per_s = steps * args.batch_size / seconds
        print(f"{label}: {img_per_s:.1f} img/s ({seconds / steps * 1000:.1f} ms/step, batch {args.batch_size}, "
              f"{steps} steps)", flush=True)
        return img_per_s

    # One round (the default) times the baseline, frees it, then builds and times hfgen, so that CUDA peak
    # memory is per path. Interleaved rounds (--rounds > 1) share a busy machine's load changes out between the
    # two paths; peak memory is then that of both together.
    run(baseline_step, args.warmup_steps)
    per_round = max(1, args.steps // args.rounds)
    if args.rounds == 1:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        baseline_seconds = run(baseline_step, per_round)
        peak_baseline = _peak_memory_gb(device)
        del base_model, base_opt, base_ema, loader, lr_sched
        accelerator.free_memory()  # the Accelerator holds references to everything it prepared
    model, optimizer, ema, unwrapped, hfgen_step = build_hfgen()
    run(hfgen_step, args.warmup_steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.rounds == 1:
        hfgen_seconds = run(hfgen_step, per_round)
    else:
        baseline_seconds = hfgen_seconds = 0.0
        for _ in range(args.rounds):
            baseline_seconds += run(baseline_step, per_round)
            hfgen_seconds += run(hfgen_step, per_round)
        peak_baseline = _peak_memory_gb(device)
    peak_hfgen = _peak_memory_gb(device)
    timed_steps = per_round * args.rounds
    img_per_s_baseline = report("baseline (diffusers example step)", baseline_seconds, timed_steps)
    img_per_s_hfgen = report("hfgen (hfgen.training.train_step)", hfgen_seconds, timed_steps)

    # FLOPs of one forward + backward of the objective (eager model; matmuls and convolutions)
    images = uint8[: args.batch_size].to(device)
    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        with accelerator.autocast():
            loss, _ = family.loss(unwrapped, images, 0, torch.Generator(device=device).manual_seed(0), cfg)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    gflop_per_img = flop_counter.get_total_flops() / args.batch_size / 1e9
    tflop_per_s = gflop_per_img * img_per_s_hfgen / 1e3
    ratio = img_per_s_hfgen / img_per_s_baseline
    num_parameters = sum(p.numel() for p in unwrapped.parameters())
    print(f"ratio hfgen / baseline: {ratio:.2f}x")
    print(f"{gflop_per_img:.3f} GFLOP per image (fwd + bwd), {tflop_per_s:.3f} TFLOP/s achieved by hfgen's step; "
          f"{num_parameters / 1e6:.2f}M parameters; peak memory {peak_hfgen:.2f} GB "
          f"({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    result = {
        "img_per_s_hfgen": round(img_per_s_hfgen, 2), "img_per_s_baseline": round(img_per_s_baseline, 2),
        "ratio": round(ratio, 3), "gflop_per_img": round(gflop_per_img, 4), "tflop_per_s": round(tflop_per_s, 4),
        "peak_memory_gb": round(peak_hfgen, 3), "peak_memory_gb_baseline": round(peak_baseline, 3),
        "preset": args.preset, "batch_size": args.batch_size, "steps": timed_steps, "rounds": args.rounds,
        "device": str(device.type),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "mixed_precision": args.mixed_precision, "torch_compile": args.torch_compile,
        "torch_compile_mode": args.torch_compile_mode if args.torch_compile else None,
        "num_parameters": num_parameters, "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
