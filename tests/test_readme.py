"""The README's code runs.

- Every fenced ``python`` block runs, in order and in one namespace (as a reader pastes them), against the tiny
  runs of ``tiny_runs``: the folders and the repo id it names become those folders, and the sizes in ``SMALLER``
  small ones; every other character is the README's.
- Every ``hfgen sample | evaluate | publish --dry-run`` command of its ``bash`` blocks that is written out in full (no
  ``[optional]`` part, no ``a|b`` choice) runs the same way, on the first 16 test images. Left out as not cheap:
  the sample-quality evaluations (``--metrics`` with fd, kid, pr or classes: thousands of generated images), and
  ``hfgen publish`` without ``--dry-run`` (it uploads).
- Every training command's flags are accepted by its script's parser (training itself is what the rest of the
  suite tests, at tiny sizes).
"""

import re
import shlex
from pathlib import Path

import pytest

from hfgen.cli import main
from hfgen.families import FAMILIES
from hfgen.training import build_parser

from conftest import ROOT, requires_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

README = (ROOT / "README.md").read_text()
#: the README's folders (and, in its Python, its example repo id) -> the tiny run that stands in for it (family,
#: class-conditional)
FOLDERS = {"runs/vae": ("vae", False), "runs/hvae": ("hvae", False), "runs/ddpm": ("ddpm", False),
           "runs/ddpm-c": ("ddpm", True), "runs/ldm": ("ldm", True), "runs/joined": ("ldm-hvae", False),
           "you/hfgen-vae-fmnist": ("vae", False)}
#: (in the README, as run here): sizes only
SMALLER = (("batch_size=16", "batch_size=4"), ("batch_size=8", "batch_size=4"), ("importance_samples=64",
           "importance_samples=4"), ("num_steps=8", "num_steps=3"), ("--steps 20", "--steps 4"))
EXPENSIVE = re.compile(r"--metrics \S*(fd|kid|pr|classes)|--inception-weights")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """The README's shell commands, continuation lines joined, comments dropped."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def _with_folders(text: str, tiny_runs, tmp_path: Path, quote: str) -> str:
    text = text.replace(f"{quote}runs/vae-fp16{quote}", f"{quote}{tmp_path / 'vae-fp16'}{quote}")
    text = text.replace("runs/vae-eval.json", str(tmp_path / "vae-eval.json"))
    for name, run in sorted(FOLDERS.items(), key=lambda item: -len(item[0])):
        if not quote and not name.startswith("runs/"):  # a command's --repo-id stays the README's
            continue
        text = re.sub(rf"{quote}{re.escape(name)}(?=[{quote or ' '}]|$)", quote + str(tiny_runs[run]), text)
    for old, new in SMALLER:
        text = text.replace(old, new)
    return text


@requires_fashion_mnist
def test_every_python_snippet_runs_on_tiny_runs(tiny_runs, tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(_with_folders(block, tiny_runs, tmp_path, '"'), "README.md", "exec"), namespace)
    assert (tmp_path / "vae-fp16" / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert len(namespace["variations"]) == 4  # keep_groups: batch_size 4 over images[:2], 2 per image


def test_every_training_command_takes_its_flags():
    commands = [c for c in _commands() if re.search(r"training/train_\w+\.py", c)]
    assert len(commands) >= 8
    for command in commands:
        if "[" in command:  # optional parts: the flags inside and outside the brackets, each on its own
            command = re.sub(r"\[([^\]]*)\]", r"\1", command).replace("BRANCH", "b")
        tokens = shlex.split(command)
        script = next(i for i, token in enumerate(tokens) if token.startswith("training/train_"))
        family = FAMILIES[re.search(r"train_(\w+)\.py", tokens[script]).group(1)]()
        build_parser(family).parse_args(tokens[script + 1:])


@requires_fashion_mnist
def test_every_written_out_hfgen_command_runs_on_tiny_runs(tiny_runs, tmp_path, monkeypatch):
    commands = [c for c in _commands() if re.match(r"hfgen (sample|evaluate|publish) ", c)
                and "[" not in c and "|" not in c and not EXPENSIVE.search(c)
                and (not c.startswith("hfgen publish") or "--dry-run" in c)]
    assert len(commands) >= 6
    monkeypatch.chdir(tmp_path)
    for command in commands:
        command = _with_folders(command, tiny_runs, tmp_path, "")
        if command.startswith("hfgen evaluate"):  # the first 16 test images, not the whole split
            command = re.sub(r" --max-samples \d+", "", command) + " --max-samples 16"
        command = re.sub(r"--num-images \d+", "--num-images 4", command)
        if command.startswith("hfgen sample") and "--num-images" not in command:
            command += " --num-images 4"
        assert main(shlex.split(command)[1:]) in (0, None), command
