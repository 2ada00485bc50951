#!/usr/bin/env python
"""Train hfgen's Fashion-MNIST feature network (the features of fd_fmnist, kid_fmnist and precision/recall).

    OMP_NUM_THREADS=1 python training/train_feature_net.py --output_dir hfgen/metrics/weights/fmnist

The shipped weights came from exactly this command (the defaults): **test accuracy 93.32%** (float16 weights)
after 16 epochs, 7488 steps. Network: a stride-2 3x3 stem and three more stages (widths 32, 64, 128, 256; each
3x3 conv + BatchNorm + ReLU, 2x2 max-pooling after each stage but the first), a 128-unit linear layer (the
features) and the classifier; 0.52M parameters, 1.0 MB in float16. Wall-clock: 39 minutes on a 2-core machine
shared with four other CPU jobs (about 10 steps/s, i.e. 12-13 minutes, with a core to itself).

What moved it from 92.6% (the previous net: widths 32-64-128, 8 epochs, one 1-pixel shift per batch) to 93.3%:
a fourth stage, a random crop per image (shifts of up to 2 pixels) instead of one shift per batch, and more
epochs. Measured along the way: the 4-stage net with per-image crops reached 92.81% after 10 epochs, 93.32%
after 16.

Trains on the train split as the data layer gives it (uint8, 1x32x32, zero-padded from 28), with random
horizontal flips and per-image random crops, label smoothing 0.1, AdamW and a one-cycle learning rate (cosine
annealing after a 15% warm-up); reports the test-split accuracy and writes ``config.json``,
``diffusion_pytorch_model.safetensors`` (float16) and ``training.json``. One thread (``OMP_NUM_THREADS=1``) is
the fastest setting on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfgen.data import images_to_uint8, load_image_dataset
from hfgen.metrics.feature_net import FeatureNet


def load_split(split: str, max_samples: int | None = None):
    dataset = load_image_dataset("fashion_mnist", split)
    images = images_to_uint8(dataset, sample_size=32, channels=1, max_samples=max_samples)
    labels = torch.tensor(dataset["label"][: images.shape[0]], dtype=torch.long)
    return images, labels


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random horizontal flips and random crops: each image shifted by its own (dy, dx) of up to ``max_shift``
    pixels (zero padding), uint8 ``(N, C, H, W)`` in and out."""
    n, _, height, width = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if max_shift:
        padded = F.pad(images, (max_shift,) * 4).permute(0, 2, 3, 1)  # (N, H + 2s, W + 2s, C)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, :, None]
        cols = (dx[:, None] + torch.arange(width))[:, None, :]
        images = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    return images


@torch.no_grad()
def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        correct += (net(images[start:start + batch_size]).argmax(1) == labels[start:start + batch_size]).sum().item()
    return correct / images.shape[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="hfgen/metrics/weights/fmnist")
    parser.add_argument("--epochs", type=float, default=16)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--max_shift", type=int, default=2,
                        help="random crops: each image shifted by up to this many pixels")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--convs_per_stage", type=int, default=1)
    parser.add_argument("--feature_dim", type=int, default=128)
    parser.add_argument("--strided_stem", action=argparse.BooleanOptionalAction, default=True,
                        help="first convolution with stride 2 (else full resolution, then 2x2 max-pooling)")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_x, train_y = load_split("train", args.max_train_samples)
    test_x, test_y = load_split("test")
    net = FeatureNet(channels=list(args.channels), convs_per_stage=args.convs_per_stage, feature_dim=args.feature_dim,
                     strided_stem=args.strided_stem)
    net.to(memory_format=torch.channels_last)
    steps_per_epoch = train_x.shape[0] // args.batch_size
    total_steps = int(args.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, total_steps=total_steps,
                                                   pct_start=0.15)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    bar = tqdm(range(total_steps), desc="training feature net")
    net.train()
    for step in bar:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset == 0:
            permutation = torch.randperm(train_x.shape[0], generator=generator)
        index = permutation[offset * args.batch_size:(offset + 1) * args.batch_size]
        x = augment(train_x[index], generator, args.max_shift).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), train_y[index], label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
    train_seconds = time.perf_counter() - started
    # The package ships float16 weights (half the size); load_feature_net casts them back to float32, and the
    # accuracy reported is that of the rounded weights.
    net.to(memory_format=torch.contiguous_format).half().float()
    test_accuracy = accuracy(net, test_x, test_y)
    out = Path(args.output_dir)
    net.half().save_pretrained(out, safe_serialization=True)
    info = {"test_accuracy": test_accuracy, "train_seconds": train_seconds, "steps": total_steps,
            "num_parameters": sum(p.numel() for p in net.parameters()), "args": vars(args),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("test_accuracy", "train_seconds", "steps", "num_parameters")}))


if __name__ == "__main__":
    main()
