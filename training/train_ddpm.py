#!/usr/bin/env python
"""Train a DDPM (diffusers UNet2DModel + DDPMScheduler) with Accelerate.

    accelerate launch training/train_ddpm.py --dataset fashion_mnist --output_dir runs/ddpm --preset small
    accelerate launch --mixed_precision bf16 training/train_ddpm.py --preset ddpm-cifar --dataset cifar10 ...

Writes a stock diffusers DDPMPipeline folder (EMA weights) with metrics.json (L_vlb in bits/dim), samples.png
and a model card to --output_dir.
"""

from hfgen.families import DDPMFamily
from hfgen.training import build_parser, train


def main(argv=None):
    family = DDPMFamily()
    args = build_parser(family, description=__doc__).parse_args(argv)
    train(family, args)


if __name__ == "__main__":
    main()
