#!/usr/bin/env python
"""Train a latent diffusion prior (diffusers UNet2DModel + DDPMScheduler) over a first stage's latents with Accelerate.

    hfgen train vae --preset small-spatial --output_dir runs/vae-spatial            # a VAE first stage, or
    hfgen train hvae --preset small --output_dir runs/hvae                          # a hierarchical one (LSGM's join)
    accelerate launch training/train_ldm.py --vae runs/vae-spatial --output_dir runs/ldm [--class_conditional]
    accelerate launch training/train_ldm.py --vae runs/hvae --diffused_groups 2 [--train_first_stage] --output_dir runs/join

Writes a LatentDiffusionPipeline folder (the first stage, the EMA UNet, the scheduler, and their code) with
metrics.json (the bound on -log p(x) in bits/dim beside the first stage's own ELBO), samples.png and a model card.
"""

from hfgen.families import LatentDiffusionFamily
from hfgen.training import build_parser, train


def main(argv=None):
    family = LatentDiffusionFamily()
    args = build_parser(family, description=__doc__).parse_args(argv)
    train(family, args)


if __name__ == "__main__":
    main()
