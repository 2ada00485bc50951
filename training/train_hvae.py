#!/usr/bin/env python
"""Train a hierarchical VAE (hfgen.HierarchicalVAEModel) with Accelerate.

    accelerate launch training/train_hvae.py --dataset fashion_mnist --output_dir runs/hvae --preset small

Writes a HierarchicalVAEPipeline folder (EMA weights) with metrics.json (including KL and active units per latent
group), samples.png and a model card to --output_dir.
"""

from hfgen.families import HVAEFamily
from hfgen.training import build_parser, train


def main(argv=None):
    family = HVAEFamily()
    args = build_parser(family, description=__doc__).parse_args(argv)
    train(family, args)


if __name__ == "__main__":
    main()
