#!/usr/bin/env python
"""Sample grids of the latent-space tools of the VAE pipelines, for the docs:

    python scripts/latent_grids.py runs/units/vae runs/units/hvae --out docs/images

- ``<family>-interpolation.png``: rows of spherical interpolations between pairs of test images (ends: the two
  images' own decodings);
- ``hvae-keep-top-groups.png`` (hierarchical VAE): for each of four test images (first column), the top k groups
  kept from its posterior and the rest drawn from the prior at temperature 0.8, one row per k, four draws each.
"""

import argparse
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from hfgen.data import images_to_uint8, load_image_dataset
from hfgen.families import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = images_to_uint8(load_image_dataset("fashion_mnist", "test"), sample_size=32, max_samples=16,
                           show_progress=False)
    for folder in args.folders:
        pipe, family = load_pipeline(folder, "cpu")
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for a, b in ((0, 1), (2, 3), (4, 7), (8, 9)):
            rows += pipe.interpolate(test[a : a + 1], test[b : b + 1], num_steps=8).images
        make_image_grid(rows, rows=4, cols=8).save(out / f"{family.name}-interpolation.png")
        if family.name == "hvae":
            grid = []
            for index in (0, 1, 2, 7):
                image = test[index : index + 1]
                for keep in (1, 3, 5):
                    drawn = pipe(images=image.repeat(4, 1, 1, 1), keep_groups=keep, batch_size=4, temperature=0.8,
                                 generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
                    grid += [pipe.reconstruct(image)[0], *drawn]
            make_image_grid(grid, rows=12, cols=5).save(out / "hvae-keep-top-groups.png")
        print(folder, "->", out)


if __name__ == "__main__":
    main()
