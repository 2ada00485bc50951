#!/usr/bin/env python
"""Train a Gaussian VAE (hfgen.VAEModel) with Accelerate.

    accelerate launch training/train_vae.py --dataset fashion_mnist --output_dir runs/vae --preset small

Writes a VAEPipeline folder (EMA weights) with metrics.json, samples.png and a model card to --output_dir.
"""

from hfgen.families import VAEFamily
from hfgen.training import build_parser, train


def main(argv=None):
    family = VAEFamily()
    args = build_parser(family, description=__doc__).parse_args(argv)
    train(family, args)


if __name__ == "__main__":
    main()
