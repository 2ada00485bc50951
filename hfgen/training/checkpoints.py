"""Crash-safe training checkpoints on top of ``Accelerator.save_state``.

A checkpoint is first written to ``checkpoints/checkpoint-<step>.tmp`` and renamed to
``checkpoints/checkpoint-<step>`` only once every process has finished writing, so a crash while writing leaves
the previous checkpoint the newest complete one; leftovers ending in ``.tmp`` are never resumed from and are
cleared by the next save. Older complete checkpoints beyond the retention limit are removed after the rename.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume_path(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to resume from: ``None`` for a fresh start (also for 'latest' when none exists yet)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    in_output_dir = checkpoint_dir(output_dir) / resume_from_checkpoint
    if not path.is_absolute() and in_output_dir.is_dir():
        path = in_output_dir  # a name such as checkpoint-500 is looked up in the run's own folder, as diffusers does
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is neither a folder nor a checkpoint in "
            f"{checkpoint_dir(output_dir)}; expected a checkpoint-<step> folder written by a training run, or 'latest'"
        )
    if path.name.endswith(".tmp"):
        raise ValueError(f"{path} is an incomplete checkpoint (the run stopped while writing it)")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int,
                    write_pipeline: Callable[[Path], None] | None = None) -> Path:
    """Write a checkpoint for ``step`` from every process; rename it into place and prune on the main process.
    ``write_pipeline(folder)`` (main process, before the rename) adds a pipeline folder beside the training state,
    so that the checkpoint loads with ``from_pretrained``, ``hfgen sample`` and ``hfgen evaluate``."""
    root = checkpoint_dir(output_dir)
    final = root / f"checkpoint-{step}"
    partial = root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob("checkpoint-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if write_pipeline is not None and accelerator.is_main_process:
        write_pipeline(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved before (e.g. a resumed run): replace it
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> None:
    """``Accelerator.load_state(path)``, with a checkpoint of another model shape refused in one line (the first
    mismatched tensor) instead of ``load_state_dict``'s list of every tensor."""
    try:
        accelerator.load_state(str(path))
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if not lines or not lines[0].startswith("Error(s) in loading state_dict"):
            raise
        kinds = ("size mismatch", "Missing key", "Unexpected key")
        first = next((line for line in lines[1:] if line.startswith(kinds)), lines[0])
        raise ValueError(f"checkpoint {path} holds another model than these settings build ({first[:300]}); expected "
                         f"a checkpoint of the same family and model config") from None
