"""hfgen's ``from_pretrained`` and ``save_pretrained`` for its pipeline classes (installed by ``hfgen.pipelines``).

The pipeline files import only torch and diffusers so that a published folder can carry them; each has two empty
class attributes, ``_hfgen_from_pretrained`` and ``_hfgen_save_pretrained``, which ``install_hooks`` fills when the
file is imported as part of hfgen: loading reads a folder into hfgen's own classes (``hfgen.remote_code``), saving
writes diffusers' folder plus the code files, and ``push_to_hub=True`` publishes it (``hfgen.hub``). This module
sits above both, so that neither of them imports the other's callers.
"""

from __future__ import annotations

from pathlib import Path

from .hub import publish
from .remote_code import load_pretrained, write_code_files


def save_pretrained(pipeline, save_directory, **kwargs) -> None:
    """``save_pretrained`` of hfgen's pipelines: diffusers' folder (safetensors weights, or ``.bin`` with
    ``safe_serialization=False``, as diffusers writes them) plus the code files and the ``model_index.json`` entries
    that let plain diffusers load it with ``trust_remote_code=True``.
    ``push_to_hub=True`` then publishes the folder with ``hfgen.hub.publish`` (``repo_id``, ``private``,
    ``commit_message``, ``revision``, ``token`` as in diffusers)."""
    from diffusers import DiffusionPipeline

    push = kwargs.pop("push_to_hub", False)
    hub_args = {key: kwargs.pop(key) for key in ("repo_id", "private", "commit_message", "revision", "token",
                                                 "create_pr") if key in kwargs}
    DiffusionPipeline.save_pretrained(pipeline, save_directory, **kwargs)
    write_code_files(save_directory, type(pipeline), component_classes(pipeline))
    if push:
        if hub_args.pop("create_pr", False):
            raise ValueError("hfgen publishes to a branch (revision=...), not as a pull request")
        repo_id = hub_args.pop("repo_id", None) or Path(save_directory).name
        publish(save_directory, repo_id, **hub_args)


def component_classes(pipeline) -> dict[str, type]:
    """The class of each of a pipeline's components: where the pipeline takes one of several
    (``install_hooks``), the one it holds."""
    return {name: type(getattr(pipeline, name)) if isinstance(classes, tuple) else classes
            for name, classes in type(pipeline)._hfgen_components.items()}


def install_hooks(pipeline_class: type, components: dict[str, type | tuple[type, ...]]) -> None:
    """Make ``pipeline_class.from_pretrained`` / ``save_pretrained`` hfgen's (see the module docstring). A
    component may be one of several classes (a tuple): ``model_index.json`` names the one a folder holds."""
    pipeline_class._hfgen_components = dict(components)
    pipeline_class._hfgen_from_pretrained = staticmethod(load_pretrained)
    pipeline_class._hfgen_save_pretrained = staticmethod(save_pretrained)
