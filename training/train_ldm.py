#!/usr/bin/env python
"""Train a latent diffusion prior (diffusers UNet2DModel + DDPMScheduler) over a frozen VAE's latents with Accelerate.

    hfgen train vae --preset small-spatial --output_dir runs/vae-spatial            # first stage
    accelerate launch training/train_ldm.py --vae runs/vae-spatial --output_dir runs/ldm [--class_conditional]

Writes a LatentDiffusionPipeline folder (the VAE, the EMA UNet, the scheduler, and their code) with metrics.json
(the bound on -log p(x) in bits/dim beside the VAE's own N(0, I)-prior ELBO), samples.png and a model card.
"""

from hfgen.families import LatentDiffusionFamily
from hfgen.training import build_parser, train


def main(argv=None):
    family = LatentDiffusionFamily()
    args = build_parser(family, description=__doc__).parse_args(argv)
    train(family, args)


if __name__ == "__main__":
    main()
