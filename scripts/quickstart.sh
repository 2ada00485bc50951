#!/usr/bin/env bash
# The main job on a fresh machine: set up, train a small VAE on Fashion-MNIST (a few minutes on a CPU),
# write its sample grid and print its test-set bits/dim.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/setup.sh"
out=${1:-runs/vae-small}
# Without a GPU, --cpu makes accelerate give the process every core (it defaults to one thread otherwise).
device_flags=$(python -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")
accelerate launch $device_flags --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training/train_vae.py --preset small --dataset fashion_mnist --output_dir "$out"
hfgen sample "$out" --num-images 64 --seed 0 --out "$out/grid.png"
hfgen evaluate "$out" --dataset fashion_mnist --split test --importance-samples 8
echo "samples: $out/grid.png   model folder: $out" >&2
