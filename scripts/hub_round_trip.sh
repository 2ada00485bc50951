#!/usr/bin/env bash
# The Hub round trip of one trained folder, on this machine only: the files `hfgen publish` selects are committed to
# a local git repo that olah (a Hugging Face mirror server, `pip install olah`) serves on 127.0.0.1 as the model
# repo ORG/NAME; then the folder is loaded by repo id with hfgen (`hfgen sample`) and with plain diffusers, once
# without trust_remote_code (refused) and once with it. Nothing leaves the machine; the server is stopped on exit.
#
#   bash scripts/hub_round_trip.sh RUN_DIR [ORG/NAME]
set -euo pipefail
run=$(cd "$1" && pwd)
repo_id=${2:-hfgen-examples/$(basename "$run")}
work=$(mktemp -d)
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== hfgen publish $run --repo-id $repo_id --dry-run"
hfgen publish "$run" --repo-id "$repo_id" --dry-run | tee "$work/selection.json"

mirror="$work/mirrors/models/$repo_id"
mkdir -p "$mirror"
python - "$run" "$mirror" "$work/selection.json" <<'EOF'
import json, shutil, sys
from pathlib import Path
run, mirror, selection = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
for name in selection["files"]:
    (mirror / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / name, mirror / name)
EOF
git -C "$mirror" init -q -b main
git -C "$mirror" add -A
git -C "$mirror" -c user.name=hfgen -c user.email=hfgen@localhost commit -q -m "hfgen publish"

cat > "$work/olah.toml" <<EOF
[basic]
host = "127.0.0.1"
port = $port
repos-path = "$work/cache"
mirrors-path = ["$work/mirrors"]

[accessibility]
offline = true
EOF
python -m olah.server -c "$work/olah.toml" --log-path "$work/logs" >"$work/olah.log" 2>&1 &
server=$!
export HF_ENDPOINT=http://127.0.0.1:$port HF_HOME=$work/hf-home HF_HUB_DISABLE_TELEMETRY=1
unset HF_HUB_OFFLINE
for _ in $(seq 100); do
  curl -sf "$HF_ENDPOINT/api/models/$repo_id/revision/main" >/dev/null && break
  sleep 0.3
done
echo "== olah serves $repo_id at $HF_ENDPOINT"

# DDPM: 50 DDPM steps instead of all T, to keep the demonstration short
ddpm=$(python -c "import json, sys; print(int('DDPM' in json.dumps(json.load(open(sys.argv[1]))['_class_name'])))" \
       "$run/model_index.json")
steps_flags=""; [ "$ddpm" = 1 ] && steps_flags="--scheduler ddpm --steps 50"
echo "== hfgen sample $repo_id --num-images 16 --seed 0 --out $work/grid.png $steps_flags"
hfgen sample "$repo_id" --num-images 16 --seed 0 --out "$work/grid.png" $steps_flags 2>/dev/null

echo "== hfgen, by repo id: 4 images, seed 0"
python - "$repo_id" "$ddpm" <<'EOF' 2>&1 | grep -v -e "it/s]" -e "^$"
import hashlib, sys
import torch
from hfgen.families import load_pipeline

pipe, family = load_pipeline(sys.argv[1])
steps = {"num_inference_steps": 50} if sys.argv[2] == "1" else {}
images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), output_type="np", **steps).images
print("hfgen:", type(pipe).__module__ + "." + type(pipe).__name__, "| images", images.shape,
      "sha256", hashlib.sha256(images.tobytes()).hexdigest()[:16])
EOF

echo "== plain diffusers (hfgen not importable), without and with trust_remote_code"
python -I - "$repo_id" "$ddpm" <<'EOF' 2>&1 | grep -v -e "it/s]" -e "^$"
import hashlib, sys

class BlockHfgen:
    def find_spec(self, name, path=None, target=None):
        if name == "hfgen" or name.startswith("hfgen."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, BlockHfgen())
try:
    import hfgen
    raise SystemExit("hfgen is importable")
except ModuleNotFoundError as error:
    print("import hfgen:", error)
import torch
from diffusers import DiffusionPipeline

repo_id = sys.argv[1]
# revision="main": olah's offline mode resolves a repo's head only through /revision/main (the Hub needs no revision)
try:
    DiffusionPipeline.from_pretrained(repo_id, revision="main")
    print("loaded without trust_remote_code (the repo carries no code)")
except ValueError as error:
    print("without trust_remote_code:", str(error).splitlines()[0])
pipe = DiffusionPipeline.from_pretrained(repo_id, revision="main", trust_remote_code=True)
steps = {"num_inference_steps": 50} if sys.argv[2] == "1" else {}
images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), output_type="np", **steps).images
model = pipe.unet if sys.argv[2] == "1" else pipe.vae
print("with trust_remote_code:", type(pipe).__module__ + "." + type(pipe).__name__, "| model:",
      type(model).__module__ + "." + type(model).__name__, "| images", images.shape,
      "sha256", hashlib.sha256(images.tobytes()).hexdigest()[:16])
EOF
