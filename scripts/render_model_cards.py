#!/usr/bin/env python
"""Render the model card of trained folders into docs/model_cards/<name>/ (README.md, with the folder's
metrics.json, training_config.json and samples.png beside it), as the card would read on the Hub.

    python scripts/render_model_cards.py RUN_DIR [RUN_DIR ...] [--owner hfgen-examples] [--out docs/model_cards]

The repo id each card names is OWNER/<folder name>. A folder already under --out (no weights, only the card's files)
is rendered again from its own metrics.json and training_config.json: after a template change,
`python scripts/render_model_cards.py docs/model_cards/*` brings the committed cards up to date, which
tests/test_hub.py checks.
"""

import argparse
import json
import shutil
from pathlib import Path

from hfgen.families import FAMILIES, family_for_pipeline_class
from hfgen.hub import render_model_card
from hfgen.remote_code import pipeline_class_name, read_model_index


def render(folder: Path, out: Path, repo_id: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "training_config.json", "samples.png"):
        if (folder / name).is_file() and (folder / name).resolve() != (out / name).resolve():
            shutil.copyfile(folder / name, out / name)
    metrics = json.loads((out / "metrics.json").read_text())
    training_config = json.loads((out / "training_config.json").read_text())
    if (folder / "model_index.json").is_file():
        family = family_for_pipeline_class(pipeline_class_name(read_model_index(folder)))
    else:  # a committed example card: the family its metrics name
        family = FAMILIES[metrics["family"]]()
    render_model_card(family, metrics, training_config, repo_id).save(out / "README.md")
    return out / "README.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--owner", default="hfgen-examples")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "model_cards")
    args = parser.parse_args()
    for folder in args.folders:
        print(render(folder, args.out / folder.name, f"{args.owner}/{folder.name}"))


if __name__ == "__main__":
    main()
