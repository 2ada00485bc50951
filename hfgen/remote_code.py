"""The folder layout that loads both with hfgen and with plain diffusers, and hfgen's own loading of it.

A pipeline folder of an hfgen family (VAE, hierarchical VAE) carries its code, so that diffusers' remote-code
mechanism can load it where hfgen is not installed:

    model_index.json      {"_class_name": ["pipeline_vae", "VAEPipeline"], "vae": ["modeling_vae", "VAEModel"]}
    pipeline_vae.py       a verbatim copy of hfgen/pipelines/pipeline_vae.py (imports only torch and diffusers)
    vae/config.json  vae/diffusion_pytorch_model.safetensors
    vae/modeling_vae.py   hfgen/models/{likelihoods,blocks,vae}.py joined into one module (see ``bundle_modules``)

A latent diffusion folder carries ``pipeline_ldm.py`` (joined with the guidance rules of
``pipeline_ddpm_conditional.py`` it imports, by ``bundle_modules``), ``vae/modeling_vae.py`` and diffusers'
``unet/`` and ``scheduler/``. A class-conditional DDPM folder carries its pipeline file only
(``pipeline_ddpm_conditional.py``; its
``model_index.json`` names ``["pipeline_ddpm_conditional", "ClassConditionalDDPMPipeline"]``, diffusers'
``UNet2DModel`` and ``DDPMScheduler``, and the pipeline's ``class_names``); an unconditional DDPM folder is a stock
``DDPMPipeline`` folder and carries no code.

``DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)`` then imports the pipeline from the
root file and the model from the component folder; without ``trust_remote_code`` diffusers refuses before it runs
any of that code. The model code is one self-contained file per component because diffusers downloads only the
component's own module file from a repo (not the files it imports relatively).

With hfgen installed, ``VAEPipeline.from_pretrained`` / ``HierarchicalVAEPipeline.from_pretrained``
(``load_pretrained``, installed by ``hfgen.pipeline_hooks``) never run code from the folder: they read
``model_index.json`` and the weights into hfgen's own classes, for a local folder or a Hub repo id (whose files are
downloaded first, safetensors weights and configs only; a local folder saved with ``safe_serialization=False`` loads
from its ``.bin`` files with ``torch.load(weights_only=True)``, as diffusers loads them). Folders written before this
layout (``"_class_name": "VAEPipeline"``, ``"vae": ["hfgen.models.vae", ...]``) load the same way.
``write_code_files`` completes the layout when hfgen saves a pipeline, so every folder hfgen writes is the folder it
publishes. This module reads and writes folders only; publishing them is ``hfgen.hub``'s.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
from pathlib import Path

from .files import write_json_atomically

#: files a load from the Hub needs: configs and safetensors weights (never code, never pickles)
LOAD_PATTERNS = ["model_index.json", "*/config.json", "*/scheduler_config.json", "*.safetensors",
                 "*.safetensors.index.json"]

# ---------------------------------------------------------------------------------------------- model code
def _relative_imports(tree: ast.Module) -> list[str]:
    modules = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or not node.module:
                raise ValueError(f"only `from .module import name` relative imports can be bundled, got "
                                 f"{ast.unparse(node)!r}")
            modules.append(node.module)
    return modules


def _module_order(path: Path) -> list[Path]:
    """``path`` and the sibling modules it imports relatively (recursively), dependencies first."""
    order: list[Path] = []

    def visit(current: Path, stack: tuple[Path, ...]) -> None:
        if current in order:
            return
        if current in stack:
            raise ValueError(f"circular relative import through {current.name}")
        for name in _relative_imports(ast.parse(current.read_text())):
            visit(current.parent / f"{name}.py", stack + (current,))
        order.append(current)

    visit(path, ())
    return order


def bundle_modules(path: str | Path) -> str:
    """The source of module ``path`` and every sibling module it imports relatively, as one module.

    Each module's body is kept as written (comments included) except its docstring, its ``from __future__``
    import and its relative imports, which name things the joined module defines itself (``as`` aliases become
    assignments). A name defined at the top level of two of the modules is refused, since one would silently
    replace the other."""
    path = Path(path)
    modules = _module_order(path)
    defined: dict[str, str] = {}
    parts = []
    for module in modules:
        source = module.read_text()
        tree = ast.parse(source)
        lines = source.splitlines()
        drop: set[int] = set()
        replace: dict[int, str] = {}
        for i, node in enumerate(tree.body):
            is_docstring = (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                            and isinstance(node.value.value, str))
            is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
            is_relative = isinstance(node, ast.ImportFrom) and node.level > 0
            if is_docstring or is_future or is_relative:
                drop.update(range(node.lineno - 1, node.end_lineno))
            if is_relative:  # the names are defined above in the joined module; keep `as` aliases where they were
                aliases = [f"{a.asname} = {a.name}" for a in node.names if a.asname and a.asname != a.name]
                if aliases:
                    replace[node.lineno - 1] = "\n".join(aliases)
            for name in _defined_names(node):
                if name in defined and defined[name] != module.name:
                    raise ValueError(f"{name!r} is defined in both {defined[name]} and {module.name}; rename one "
                                     f"so that the modules can be joined into one file")
                defined[name] = module.name
        kept = [replace.get(n, line) for n, line in enumerate(lines) if n not in drop or n in replace]
        body = "\n".join(kept).strip("\n")
        parts.append(f"# {'-' * 40} {module.parent.name}/{module.name}\n\n{body}\n")
    main_doc = (ast.get_docstring(ast.parse(path.read_text()), clean=False) or "").rstrip()
    names = ", ".join(f"hfgen/{m.parent.name}/{m.name}" for m in modules)
    header = (f'"""{main_doc}\n\nGenerated by hfgen from {names}:\n'
              "this file's code and what it imports from hfgen as one module, so that diffusers' remote-code loading\n"
              "(trust_remote_code=True) needs only torch and diffusers. Edit the hfgen sources, not this file.\n"
              '"""\n\nfrom __future__ import annotations\n\n')
    source = header + "\n\n".join(parts)
    ast.parse(source)  # the joined module must still be valid Python
    return source


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def pipeline_module_name(pipeline_class: type) -> str:
    """``pipeline_vae`` for ``VAEPipeline``: the file name (without .py) the pipeline code has in a folder."""
    return Path(inspect.getsourcefile(pipeline_class)).stem


def component_module_name(model_class: type) -> str:
    """``modeling_vae`` for ``VAEModel``: the file name (without .py) a component's code has in its folder."""
    return "modeling_" + Path(inspect.getsourcefile(model_class)).stem


def write_code_files(folder: str | Path, pipeline_class: type, components: dict[str, type]) -> list[str]:
    """Write the pipeline and model code into a folder saved by ``save_pretrained`` and point ``model_index.json``
    at them (``[module, class]`` entries, as diffusers' remote-code loading expects). Returns the files written."""
    folder = Path(folder)
    written = []
    pipeline_module = pipeline_module_name(pipeline_class)
    pipeline_file = Path(inspect.getsourcefile(pipeline_class))
    pipeline_source = pipeline_file.read_text()
    if _relative_imports(ast.parse(pipeline_source)):  # a pipeline built on another's rules: one file, as models are
        pipeline_source = bundle_modules(pipeline_file)
    (folder / f"{pipeline_module}.py").write_text(pipeline_source)
    written.append(f"{pipeline_module}.py")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [pipeline_module, pipeline_class.__name__]
    for name, model_class in components.items():
        if _is_diffusers_class(model_class):  # diffusers' own class (a DDPM's UNet, its scheduler): no code to carry
            continue
        module = component_module_name(model_class)
        (folder / name / f"{module}.py").write_text(bundle_modules(inspect.getsourcefile(model_class)))
        written.append(f"{name}/{module}.py")
        index[name] = [module, model_class.__name__]
    write_json_atomically(index_path, index)
    return written


def _is_diffusers_class(model_class: type) -> bool:
    return model_class.__module__.split(".")[0] == "diffusers"


# ---------------------------------------------------------------------------------------------- loading
def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path (a Hub repo id is ``name`` or ``owner/name``)."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
            or os.path.exists(name))


def resolve_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None, *,
                   allow_patterns: list[str] | None = None, **hub_kwargs) -> Path:
    """A local pipeline folder as is, or the files of a Hub model repo (``allow_patterns``, default: configs and
    safetensors weights) downloaded into the Hugging Face cache. Raises ``FileNotFoundError`` naming the value and
    what was expected when it is neither."""
    name = os.fspath(path_or_repo_id)
    path = Path(name).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision {revision!r} was given, but {name!r} is a local folder, not a Hub repo id")
        return path
    if looks_like_path(name):
        raise FileNotFoundError(f"{name!r} is not a folder; expected a pipeline folder written by an hfgen "
                                f"training script (with model_index.json) or a Hub repo id such as 'user/model'")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=allow_patterns or LOAD_PATTERNS,
                                      **hub_kwargs))
    except GatedRepoError:
        raise
    except RevisionNotFoundError:
        raise FileNotFoundError(f"revision {revision!r} does not exist in the Hub repo {name!r} "
                                f"({constants.ENDPOINT}); expected a branch, tag or commit of it") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name!r} is neither a local folder nor a model repo on {constants.ENDPOINT} (or the repo is private "
            f"and no token was found); expected a pipeline folder written by an hfgen training script or the id "
            f"of a repo it was published to") from None
    except (LocalEntryNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(f"could not get {name!r} from {constants.ENDPOINT} and it is not in the local "
                                f"cache ({error.__class__.__name__}); expected a reachable Hub repo id or a "
                                f"local pipeline folder") from None


def read_model_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} has no model_index.json; expected a pipeline folder written by an hfgen "
                                f"training script")
    return json.loads(index.read_text())


def pipeline_class_name(index: dict) -> str:
    """The pipeline class a ``model_index.json`` names, in either layout (``"VAEPipeline"`` or
    ``["pipeline_vae", "VAEPipeline"]``)."""
    name = index.get("_class_name")
    return name[1] if isinstance(name, (list, tuple)) else name


#: keywords of DiffusionPipeline.from_pretrained that have no meaning for hfgen's pipelines (ONNX, custom code,
#: quantisation, connected pipelines): read and ignored with a warning, as diffusers ignores unused ones
_IGNORED_KEYWORDS = ("custom_pipeline", "custom_revision", "provider", "sess_options", "provider_options", "use_onnx",
                     "load_connected_pipeline", "quantization_config", "use_flashpack", "mirror", "from_flax",
                     "output_loading_info")


def _component_dtype(dtype, name: str):
    """The dtype of component ``name`` from ``from_pretrained``'s ``dtype``: one ``torch.dtype`` for all, or a
    dict by component name with ``"default"`` for the rest (as diffusers takes it)."""
    if isinstance(dtype, dict):
        import torch

        return dtype.get(name, dtype.get("default", torch.float32))
    return dtype


def _resolve_device_map(device_map, low_cpu_mem_usage):
    """``device_map`` checked as ``DiffusionPipeline.from_pretrained`` checks it (same messages); returns the device
    the component goes to (an hfgen pipeline has one model, so ``"balanced"`` puts it on the first accelerator)."""
    if device_map is None:
        return None
    from diffusers.pipelines.pipeline_utils import SUPPORTED_DEVICE_MAP
    from diffusers.utils.torch_utils import get_device

    if not isinstance(device_map, str):
        raise ValueError("`device_map` must be a string.")
    if device_map not in SUPPORTED_DEVICE_MAP:
        raise NotImplementedError(f"{device_map} not supported. Supported strategies are: "
                                  f"{', '.join(SUPPORTED_DEVICE_MAP)}")
    if low_cpu_mem_usage is False:
        raise ValueError(f"You cannot set `low_cpu_mem_usage` to False while using device_map={device_map} for "
                         "loading and dispatching. Please make sure to set `low_cpu_mem_usage=True`.")
    return get_device() if device_map == "balanced" else device_map


def load_pretrained(pipeline_class, pretrained_model_name_or_path, **kwargs):
    """``from_pretrained`` of hfgen's pipelines: a local folder or a Hub repo id, read into hfgen's own classes
    (``pipeline_class._hfgen_components``); no code from the folder runs. Weights load as diffusers loads them:
    safetensors, or where a component has none (``save_pretrained(..., safe_serialization=False)``), its ``.bin``
    file through ``torch.load(weights_only=True)``, which unpickles tensors only (``use_safetensors=True`` / ``False``
    asks for one of the two). From a Hub repo hfgen downloads configs and safetensors only (what ``hfgen publish``
    uploads). Each component loaded is logged at INFO as diffusers does, and ``pipe.name_or_path`` is the folder or
    repo id.

    Takes ``DiffusionPipeline.from_pretrained``'s keywords as diffusers 0.42 does: ``dtype`` (or the deprecated
    ``torch_dtype``; one dtype or a dict by component with ``"default"``), ``variant``, ``low_cpu_mem_usage``,
    ``device_map`` (``"balanced"``, ``"cpu"`` or the accelerator's name; the pipeline records it in
    ``hf_device_map``), ``max_memory``, ``offload_folder``, ``offload_state_dict``, ``disable_mmap``, the Hub ones
    (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``, ``proxies``) and a component
    to use instead of the folder's (``vae=model``). Keywords without a meaning here are ignored with diffusers'
    warning, not refused."""
    from diffusers.models.modeling_utils import _LOW_CPU_MEM_USAGE_DEFAULT
    from diffusers.utils import logging
    from diffusers.utils.deprecation_utils import _resolve_dtype

    logger = logging.get_logger("diffusers.pipelines.pipeline_utils")
    hub = {key: kwargs.pop(key, default) for key, default in (
        ("cache_dir", None), ("token", None), ("local_files_only", False), ("force_download", False),
        ("proxies", None))}
    if hub["proxies"] is None:
        del hub["proxies"]
    hub["local_files_only"] = bool(hub["local_files_only"])
    revision = kwargs.pop("revision", None)
    dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
    import torch

    if dtype is not None and not isinstance(dtype, (dict, torch.dtype)):
        logger.warning(f"Passed `dtype` {dtype} is not a `torch.dtype`. Defaulting to `torch.float32`.")
        dtype = torch.float32
    variant = kwargs.pop("variant", None)
    low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", _LOW_CPU_MEM_USAGE_DEFAULT)
    device_map = kwargs.pop("device_map", None)
    device = _resolve_device_map(device_map, low_cpu_mem_usage)
    loading = {key: kwargs.pop(key) for key in ("max_memory", "offload_folder", "offload_state_dict", "disable_mmap")
               if key in kwargs}
    use_safetensors = kwargs.pop("use_safetensors", None)
    kwargs.pop("trust_remote_code", None)  # hfgen never runs a folder's code, so it needs no permission to
    passed = {name: kwargs.pop(name) for name in pipeline_class._hfgen_components if name in kwargs}
    settings = {name: kwargs.pop(name) for name in _setting_names(pipeline_class) if name in kwargs}
    ignored = {key: kwargs.pop(key) for key in _IGNORED_KEYWORDS if key in kwargs}
    if ignored:
        logger.warning(f"Keyword arguments {ignored} have no meaning for {pipeline_class.__name__} (hfgen loads "
                       f"its own model classes from safetensors weights) and will be ignored.")
    if kwargs:  # diffusers' own behaviour for keywords it does not know
        logger.warning(f"Keyword arguments {kwargs} are not expected by {pipeline_class.__name__} and will be "
                       f"ignored.")

    folder = resolve_folder(pretrained_model_name_or_path, revision, **hub)
    index = read_model_index(folder)
    found = pipeline_class_name(index)
    if found != pipeline_class.__name__:
        raise ValueError(f"{pretrained_model_name_or_path} holds a {found} (model_index.json), not a "
                         f"{pipeline_class.__name__}; load it with {found}.from_pretrained or hfgen sample")
    with_variant = _components_with_variant(folder, index, variant)
    if variant is not None and not with_variant:
        # diffusers' message (its own tests match it), then what hfgen found
        raise ValueError(f"You are trying to load the model files of the `variant={variant}`, but no such modeling "
                         f"files are available. No component folder of {folder} has a *.{variant}.* weights file; "
                         f"save_pretrained(..., variant={variant!r}) writes them")
    components = {}
    for name, model_class in pipeline_class._hfgen_components.items():
        if name in passed:
            components[name] = passed[name]
            continue
        if isinstance(model_class, tuple):  # one of several classes: the one model_index.json names
            model_class = _named_class(index.get(name), model_class, name)
        if _is_scheduler_class(model_class):  # a config only: the scheduler class model_index.json names
            model_class = _scheduler_class(index.get(name), model_class)
            components[name] = model_class.from_pretrained(folder, subfolder=name)
        else:
            component_variant = variant if name in with_variant else None
            component_dtype = _component_dtype(dtype, name)
            components[name] = model_class.from_pretrained(
                folder, subfolder=name, variant=component_variant, low_cpu_mem_usage=low_cpu_mem_usage,
                use_safetensors=_use_safetensors(folder / name, component_variant, use_safetensors, model_class),
                device_map=device, **({"dtype": component_dtype} if component_dtype is not None else {}), **loading)
        logger.info(f"Loaded {name} as {model_class.__name__} from `{name}` subfolder of "
                    f"{pretrained_model_name_or_path}.")  # diffusers' words: its save/load test reads them
    pipeline = pipeline_class(**components, **_pipeline_settings(pipeline_class, index, settings))
    pipeline.register_to_config(_name_or_path=pretrained_model_name_or_path)  # pipe.name_or_path, as in diffusers
    if device_map is not None:
        pipeline.hf_device_map = {name: device for name in components} if device_map == "balanced" else device_map
    return pipeline


def _components_with_variant(folder: Path, index: dict, variant: str | None) -> set[str]:
    """The component folders (named in ``model_index.json``) holding a ``*.{variant}.*`` weights file: diffusers'
    rule, which loads the variant for those and the plain weights for the others."""
    if variant is None:
        return set()
    return {name for name in index if (folder / name).is_dir()
            and any(len(parts := path.name.split(".")) > 2 and parts[1].startswith(variant)
                    for path in (folder / name).iterdir())}


def _use_safetensors(component_folder: Path, variant: str | None, requested: bool | None, model_class) -> bool:
    """Whether to read the component's safetensors (True) or its ``.bin`` (False, unpickled with
    ``torch.load(weights_only=True)`` by diffusers): safetensors where they exist unless ``use_safetensors=False``
    asks for the ``.bin``; refuses, naming the folder and the file expected, when the one needed is missing."""
    suffix = f".{variant}" if variant else ""
    has_safetensors = _has_weights(component_folder, variant, "safetensors")
    has_bin = _has_weights(component_folder, variant, "bin")
    use = has_safetensors if requested is None else requested
    if use and not has_safetensors or not use and not has_bin:
        wanted = f"diffusion_pytorch_model{suffix}." + ("safetensors" if use else "bin" if requested is False
                                                        else "safetensors (or .bin)")
        found = sorted(path.name for path in component_folder.glob("*") if path.suffix in (".safetensors", ".bin"))
        raise FileNotFoundError(
            f"{component_folder} has no {wanted} for the {model_class.__name__} component "
            f"{component_folder.name!r}" + (f" (use_safetensors={requested})" if requested is not None else "")
            + f"; found {found or 'no weights files'}. save_pretrained writes safetensors weights "
            f"(.bin with safe_serialization=False)")
    return use


def _has_weights(component_folder: Path, variant: str | None, extension: str) -> bool:
    """Whether the folder holds ``extension`` weights of ``variant`` (``name.fp16.safetensors``, or sharded
    ``name.fp16-00001-of-00002.safetensors``), or with ``variant`` None plain ones (``name.safetensors``)."""
    for path in component_folder.glob(f"*.{extension}"):
        parts = path.name.split(".")
        if (len(parts) == 3 and variant and parts[1].startswith(variant)) or (len(parts) == 2 and not variant):
            return True
    return False


def _setting_names(pipeline_class) -> list[str]:
    """The keyword parameters of ``pipeline_class.__init__`` that are not components (e.g. ``class_names``): values
    kept in ``model_index.json`` beside the components."""
    parameters = inspect.signature(pipeline_class.__init__).parameters
    return [name for name, parameter in parameters.items()
            if name != "self" and name not in pipeline_class._hfgen_components
            and parameter.default is not inspect.Parameter.empty]


def _pipeline_settings(pipeline_class, index: dict, passed: dict) -> dict:
    """The pipeline's settings from ``model_index.json``, those passed to ``from_pretrained`` taking precedence."""
    return {**{name: index[name] for name in _setting_names(pipeline_class) if name in index}, **passed}


def _named_class(entry, classes: tuple[type, ...], name: str) -> type:
    """The one of ``classes`` that a ``model_index.json`` entry (``["modeling_hvae", "HierarchicalVAEModel"]``)
    names; another is refused, naming the ones expected."""
    class_name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
    for model_class in classes:
        if model_class.__name__ == class_name:
            return model_class
    raise ValueError(f"model_index.json names {entry!r} for `{name}`; expected one of "
                     f"{', '.join(cls.__name__ for cls in classes)}")


def _is_scheduler_class(model_class: type) -> bool:
    from diffusers import SchedulerMixin

    return issubclass(model_class, SchedulerMixin)


def _scheduler_class(entry, default: type) -> type:
    """The diffusers scheduler class a ``model_index.json`` entry (``["diffusers", "DDIMScheduler"]``) names, or
    ``default`` when the entry names none; a class from elsewhere is refused (its code would have to run)."""
    import diffusers

    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return default
    library, class_name = entry
    scheduler_class = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if scheduler_class is None or not _is_scheduler_class(scheduler_class):
        raise ValueError(f"model_index.json names the scheduler {list(entry)}; expected a diffusers scheduler such "
                         f"as [\"diffusers\", \"{default.__name__}\"] (hfgen runs no code from a folder)")
    return scheduler_class
