"""Every command and code snippet of the model card a training run writes runs, as written, in the folder.

A local folder's card loads ``"."``, so its snippets and commands run unchanged inside the folder. For each family,
unconditional and class-conditional, a tiny run is trained; every fenced ``python`` block of its ``README.md`` is
executed (in order, in one namespace, as a reader pastes them) and every ``hfgen ...`` command in it is run through
``hfgen.cli.main``. Only the sizes are swapped for small ones, by the substitutions in ``SMALLER`` (batch sizes,
image counts, sampling steps); every other character is the card's.
"""

import json
import re
import shlex

import pytest

from hfgen.cli import main
from hfgen.families import FAMILIES

from conftest import ROOT, TINY_RUNS, requires_fashion_mnist

pytestmark = [requires_fashion_mnist, pytest.mark.usefixtures("one_thread")]
ROOT_CARDS = ROOT / "docs" / "model_cards"

#: (in the card, as run here): sizes only
SMALLER = (("batch_size=16", "batch_size=2"), ("] * 8", "] * 2"), ("batch_size=8", "batch_size=2"),
           ("--num-images 64", "--num-images 4"), ("--num-images 8", "--num-images 2"), ("num_inference_steps=50", "num_inference_steps=4"),
           ("num_inference_steps=20", "num_inference_steps=4"), ("--steps 20", "--steps 4"))


def card_code(card: str) -> tuple[list[str], list[str]]:
    """The fenced ``python`` blocks of a card, and its ``hfgen ...`` commands (fenced or in backticks)."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    commands = [line.strip() for block in re.findall(r"```(?:bash|sh)\n(.*?)```", card, flags=re.S)
                for line in block.splitlines() if line.strip().startswith("hfgen ")]
    commands += re.findall(r"`(hfgen [^`]+)`", card)
    return blocks, commands


def smaller(code: str) -> str:
    for old, new in SMALLER:
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize("family_name,conditional", TINY_RUNS,
                         ids=[f"{f}-{'conditional' if c else 'unconditional'}" for f, c in TINY_RUNS])
def test_every_command_and_snippet_of_the_card_runs_in_the_folder(tiny_runs, family_name, conditional, monkeypatch,
                                                                   capsys):
    folder = tiny_runs[(family_name, conditional)]
    card = (folder / "README.md").read_text()
    blocks, commands = card_code(card)
    assert blocks and any(c.startswith("hfgen sample") for c in commands), card
    assert sum(c.startswith("hfgen evaluate") for c in commands) == 1
    assert str(folder.parent) not in card and f'"{folder.name}"' not in card  # the folder is ".", no path of ours
    monkeypatch.chdir(folder)
    namespace = {}
    for block in blocks:
        exec(compile(smaller(block), f"{folder.name}/README.md", "exec"), namespace)
    assert len(namespace["images"]) == 2
    if conditional:  # the card's conditional snippet samples its first class
        assert "class_labels=" in "".join(blocks)
    printed = {}
    for command in commands:
        capsys.readouterr()
        assert main(shlex.split(smaller(command))[1:]) in (0, None), command
        printed[command.split()[1]] = capsys.readouterr().out
    evaluation = json.loads(printed["evaluate"].strip().splitlines()[-1])
    metrics = json.loads((folder / "metrics.json").read_text())
    # the card's evaluate command measures what its table reports: the same split, images and K
    assert evaluation["split"] == metrics["split"] and evaluation["num_samples"] == metrics["num_samples"]
    assert evaluation["bits_per_dim_elbo"] == pytest.approx(metrics["bits_per_dim_elbo"], rel=1e-4)


@pytest.mark.parametrize("conditional", [False, True])
def test_the_card_names_what_the_folder_is_and_builds_on(tiny_runs, conditional):
    import yaml

    ldm = tiny_runs[("ldm", conditional)]
    data = yaml.safe_load((ldm / "README.md").read_text().split("---")[1])
    tags = set(data["tags"])
    if conditional:
        assert "class-conditional-image-generation" in tags and "unconditional-image-generation" not in tags
        assert "pipeline_tag" not in data  # the Hub has no class-conditional task
    else:
        assert data["pipeline_tag"] == "unconditional-image-generation" in tags
    for result in data["model-index"][0]["results"]:
        assert result["dataset"]["split"] == "test"  # the split's name; num_samples says how many images
    # the VAE it was trained over: by name, marked local (no path of this machine), with no Hub repo to link
    config = json.loads((ldm / "training_config.json").read_text())
    assert config["vae"] == "vae-unconditional (local folder)" and config["vae_repo_id"] is None
    assert "base_model" not in data and "`vae-unconditional (local folder)`" in (ldm / "README.md").read_text()


def test_a_card_links_the_hub_repo_of_the_vae_it_builds_on():
    from hfgen.hub import render_model_card

    metrics = json.loads((ROOT_CARDS / "ldm-small-cpu" / "metrics.json").read_text())
    config = {**json.loads((ROOT_CARDS / "ldm-small-cpu" / "training_config.json").read_text()),
              "vae": "someone/vae-spatial", "vae_repo_id": "someone/vae-spatial"}
    card = render_model_card(FAMILIES["ldm"](), metrics, config, "someone/ldm")
    assert card.data.base_model == "someone/vae-spatial"
    assert "[`someone/vae-spatial`](https://huggingface.co/someone/vae-spatial)" in card.text
