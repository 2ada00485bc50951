#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a small VAE on Fashion-MNIST (a few minutes on a CPU),
# write its sample grid and print its test-set bits/dim.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/setup.sh"
out=${1:-runs/vae-small}
accelerate launch --num_processes 1 training/train_vae.py --preset small --dataset fashion_mnist --output_dir "$out"
hfgen sample "$out" --num-images 64 --seed 0 --out "$out/grid.png"
hfgen evaluate "$out" --dataset fashion_mnist --split test --importance-samples 16
echo "samples: $out/grid.png   model folder: $out" >&2
