"""What ``--output_dir`` may already hold, checked before a run writes anything into it.

A run writes into an empty or new folder; into a folder that holds a run of the same family and model config when
it resumes (``--resume_from_checkpoint``); or, with ``--overwrite_output_dir``, into any folder, cleared first (the
transformers/diffusers convention). Anything else is refused with what the folder holds and what was expected, so
that a finished run is never silently mixed with another (a DDPM's ``unet/`` beside a VAE's ``vae/``), and a resume
with another family or model shape says which setting differs instead of failing inside ``load_state_dict``. A run
that fails before it has written a checkpoint or its final folder removes the folder it created.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .checkpoints import list_checkpoints

#: the settings besides the model config that fix the shape of the model a checkpoint holds
MODEL_SHAPE_SETTINGS = ("class_conditional", "sample_size")


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from ``training_config.json`` (tuples become lists)."""
    return json.loads(json.dumps(value))


def config_mismatch(stored: dict, family_name: str, model_config: dict, cfg) -> str | None:
    """The first difference between the run recorded in ``training_config.json`` (``stored``) and the run these
    settings would build, as ``"KEY: FOUND there, EXPECTED here"``; None when they agree."""
    if stored.get("family") != family_name:
        return f"family: {stored.get('family')!r} there, {family_name!r} here"
    stored_model = stored.get("model_config", {})
    for key, value in model_config.items():
        if key in stored_model and stored_model[key] != _as_json(value):
            return f"model config {key}: {stored_model[key]!r} there, {_as_json(value)!r} here"
    for key in MODEL_SHAPE_SETTINGS:
        if key in stored and stored[key] != _as_json(getattr(cfg, key, None)):
            return f"--{key}: {stored[key]!r} there, {_as_json(getattr(cfg, key, None))!r} here"
    return None


def _resumes_inside(output_dir: Path, resume_from_checkpoint: str | None) -> bool:
    """Whether ``--resume_from_checkpoint`` names a checkpoint inside ``output_dir``."""
    if not resume_from_checkpoint:
        return False
    if resume_from_checkpoint == "latest":
        return True
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and (output_dir / "checkpoints" / resume_from_checkpoint).exists():
        return True
    return output_dir.resolve() in path.resolve().parents


def check_output_dir(cfg, family_name: str, model_config: dict) -> None:
    """Refuse an ``--output_dir`` this run must not write into (see the module docstring), before anything is
    written. ``model_config`` is the preset's with the model flags applied (the data add their own keys later)."""
    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {cfg.output_dir}: is a file; expected a folder (new, empty, or a run to "
                         f"resume)")
    entries = sorted(entry.name for entry in output_dir.iterdir()) if output_dir.is_dir() else []
    if getattr(cfg, "overwrite_output_dir", False):
        resolved, cwd = output_dir.resolve(), Path.cwd().resolve()
        if entries and (resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve()):
            raise ValueError(f"--overwrite_output_dir would clear {resolved}, the current folder, one above it or "
                             f"the home folder; expected a run's own folder, e.g. runs/NAME")
        if _resumes_inside(output_dir, cfg.resume_from_checkpoint):
            raise ValueError(f"--overwrite_output_dir would delete the checkpoint that --resume_from_checkpoint "
                             f"{cfg.resume_from_checkpoint} resumes from; expected one of the two")
        return
    if not entries:
        return
    config_file = output_dir / "training_config.json"
    if not config_file.is_file():
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ValueError(f"--output_dir {cfg.output_dir} is not empty ({shown}) and holds no training run; expected "
                         f"a new or empty folder, or --overwrite_output_dir to clear it")
    stored = json.loads(config_file.read_text())
    finished = (output_dir / "model_index.json").is_file()
    held = (f"a {'finished' if finished else 'stopped'} {stored.get('family', 'unknown')} run"
            f" ({len(list_checkpoints(output_dir))} checkpoint(s))")
    if not cfg.resume_from_checkpoint:
        raise ValueError(f"--output_dir {cfg.output_dir} already holds {held}; expected a new or empty folder, "
                         f"--resume_from_checkpoint latest to continue that run, or --overwrite_output_dir to "
                         f"replace it")
    mismatch = config_mismatch(stored, family_name, model_config, cfg)
    if mismatch:
        raise ValueError(f"--output_dir {cfg.output_dir} holds {held} that this run cannot resume: {mismatch}; "
                         f"expected the same family and model settings, or --overwrite_output_dir to replace it")
    if finished and cfg.resume_from_checkpoint == "latest" and not list_checkpoints(output_dir):
        # "latest" of a run stopped before its first checkpoint starts afresh; a finished run would be overwritten
        raise ValueError(f"--output_dir {cfg.output_dir} holds {held}: no checkpoint to resume from (it was trained "
                         f"without --checkpointing_steps); expected --overwrite_output_dir to train it again, or "
                         f"another --output_dir")


def clear_output_dir(output_dir: str | os.PathLike) -> None:
    """Empty ``output_dir`` (``--overwrite_output_dir``), keeping the folder itself."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for entry in output_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_failed_run(output_dir: str | os.PathLike) -> bool:
    """After a run that failed in a folder it created: remove the folder unless it holds something to resume
    from or use (a checkpoint or the final pipeline). Returns whether it was removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir() or list_checkpoints(output_dir) or (output_dir / "model_index.json").exists():
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    return True
