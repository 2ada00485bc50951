"""Publishing to and loading from the Hub.

- the folder layout ``save_pretrained`` writes (pipeline and model code beside the weights) and hfgen's loading of
  it (new and old layouts, errors);
- the model card: it renders, its YAML parses, its ``model-index`` matches ``metrics.json``;
- publishing: the file selection, and the arguments handed to ``huggingface_hub`` (mocked: nothing imitates the Hub);
- plain diffusers (a subprocess where hfgen cannot be imported), with and without ``trust_remote_code``;
- loading by repo id over real HTTP: olah serves git repos holding exactly the files ``hfgen publish`` selects.
"""

import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hfgen import HierarchicalVAEPipeline, VAEPipeline
from hfgen.cli import main
from hfgen.families import FAMILIES as FAMILY_CLASSES, load_pipeline
from hfgen.families import DDPMFamily, HVAEFamily, VAEFamily
from hfgen.hub import card_metrics, conditional_metrics_layout, publish_files, render_model_card
from hfgen.remote_code import bundle_modules
from hfgen.training import build_parser, train

from conftest import PYTHON, ROOT, requires_fashion_mnist, reset_accelerate_state

FAMILIES = {"vae": VAEFamily, "hvae": HVAEFamily, "ddpm": DDPMFamily}
SAMPLE_ARGS = {"vae": {}, "hvae": {}, "ddpm": {"num_inference_steps": 5}}  # each pipeline's own call arguments
EXAMPLE_CARDS = ROOT / "docs" / "model_cards"


def _samples(pipeline, family_name: str) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np",
                    **SAMPLE_ARGS[family_name]).images


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny (untrained) model of each family saved with ``save_pretrained`` as training saves it, and its
    samples for seed 0 (``expected.npy`` beside the folder)."""
    root = tmp_path_factory.mktemp("hub-folders")
    out = {}
    for name, family_class in FAMILIES.items():
        family = family_class()
        torch.manual_seed(0)
        pipeline = family.make_pipeline(family.build_model(family.presets["tiny"].model, 1, 16))
        folder = root / name
        pipeline.save_pretrained(folder)
        np.save(root / f"{name}-expected.npy", _samples(pipeline, name))
        out[name] = folder
    return out


def _expected(folder: Path) -> np.ndarray:
    return np.load(folder.parent / f"{folder.name}-expected.npy")


# ---------------------------------------------------------------------------------------------- layout, hfgen loading
def test_save_pretrained_writes_code_that_imports_only_torch_and_diffusers(folders):
    for name, module, model_class in (("vae", "vae", "VAEModel"), ("hvae", "hvae", "HierarchicalVAEModel")):
        folder = folders[name]
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == [f"pipeline_{module}", f"{model_class.replace('Model', 'Pipeline')}"]
        assert index["vae"] == [f"modeling_{module}", model_class]
        assert (folder / f"pipeline_{module}.py").read_text() == (ROOT / "pipelines" / f"pipeline_{module}.py").read_text()
        code = (folder / "vae" / f"modeling_{module}.py").read_text()
        assert code == bundle_modules(ROOT / "hfgen" / "models" / f"{module}.py")
        imports = [line.split()[1] for line in code.splitlines() if line.startswith(("import ", "from "))]
        # the standard library, torch and diffusers only (collections: hfgen/models/labels.py's Sequence)
        assert {i.split(".")[0] for i in imports} <= {"__future__", "collections", "math", "dataclasses", "torch",
                                                       "diffusers"}
        assert f"class {model_class}(" in code
    ddpm = json.loads((folders["ddpm"] / "model_index.json").read_text())
    assert ddpm["_class_name"] == "DDPMPipeline" and not list(folders["ddpm"].glob("**/*.py"))  # stock diffusers


def test_bundling_refuses_a_name_defined_in_two_modules(tmp_path):
    (tmp_path / "a.py").write_text("X = 1\n")
    (tmp_path / "b.py").write_text('"""b"""\nfrom __future__ import annotations\nfrom .a import X as Y\nX = 2\n')
    with pytest.raises(ValueError, match="'X' is defined in both a.py and b.py"):
        bundle_modules(tmp_path / "b.py")
    (tmp_path / "b.py").write_text('"""b"""\nfrom __future__ import annotations\nfrom .a import X as Y\nZ = Y\n')
    namespace = {}
    exec(bundle_modules(tmp_path / "b.py"), namespace)
    assert namespace["Z"] == 1


def test_hfgen_loads_new_and_old_layouts_with_its_own_classes(folders, tmp_path, capsys):
    from hfgen.models import HierarchicalVAEModel, VAEModel

    for name, pipeline_class, model_class in (("vae", VAEPipeline, VAEModel),
                                              ("hvae", HierarchicalVAEPipeline, HierarchicalVAEModel)):
        pipe = pipeline_class.from_pretrained(folders[name])
        assert type(pipe.vae) is model_class  # hfgen's class, not a copy from the folder
        new_layout = _samples(pipe, name)
        np.testing.assert_allclose(new_layout, _expected(folders[name]), atol=1e-5)
        # a folder written before the layout carried code: class names of hfgen's modules, no code files
        old = tmp_path / f"old-{name}"
        shutil.copytree(folders[name], old)
        for code in old.glob("**/*.py"):
            code.unlink()
        index = json.loads((old / "model_index.json").read_text())
        index["_class_name"] = pipeline_class.__name__
        index["vae"] = [model_class.__module__, model_class.__name__]
        (old / "model_index.json").write_text(json.dumps(index))
        np.testing.assert_array_equal(_samples(pipeline_class.from_pretrained(old), name), new_layout)
        assert main(["sample", str(old), "--num-images", "2", "--out", str(tmp_path / f"{name}.png")]) == 0
    pipe, family = load_pipeline(str(folders["ddpm"]))
    assert family.name == "ddpm"
    np.testing.assert_allclose(_samples(pipe, "ddpm"), _expected(folders["ddpm"]), atol=1e-5)
    capsys.readouterr()


def test_loading_errors_name_the_value_and_what_was_expected(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'\./missing' is not a folder; expected a pipeline folder"):
        VAEPipeline.from_pretrained("./missing")
    with pytest.raises(ValueError, match="holds a VAEPipeline .* not a HierarchicalVAEPipeline"):
        HierarchicalVAEPipeline.from_pretrained(folders["vae"])
    with pytest.raises(FileNotFoundError, match=r"vae has no diffusion_pytorch_model\.bin for the VAEModel component "
                                                r"'vae' \(use_safetensors=False\); found "
                                                r"\['diffusion_pytorch_model\.safetensors'\]"):
        VAEPipeline.from_pretrained(folders["vae"], use_safetensors=False)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(folders["vae"], no_weights)
    (no_weights / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no-weights/vae has no diffusion_pytorch_model\.safetensors "
                                                r"\(or \.bin\) for the VAEModel component 'vae'; found no weights"):
        VAEPipeline.from_pretrained(no_weights)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        VAEPipeline.from_pretrained(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- publishing
def test_publish_selects_loadable_files_only(folders, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(folders["vae"], folder)
    for name in ("README.md", "samples.png", "metrics.json", "training_config.json"):
        (folder / name).write_text("{}")
    junk = ["checkpoints/checkpoint-10/model.safetensors", "checkpoints/checkpoint-10/optimizer.bin",
            "checkpoints/checkpoint-10/random_states_0.pkl", "logs/hfgen-vae/events.out.tfevents.1.host",
            "samples/step-0000010.png", ".pipeline.tmp/model_index.json", "vae/diffusion_pytorch_model.bin",
            "vae/model.pt", "vae/.hidden.json", "metrics.json.tmp", "weights.pth", "token", ".huggingface/token",
            "notes.py", "vae/helper.py"]
    for name in junk:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    expected = ["README.md", "metrics.json", "model_index.json", "pipeline_vae.py", "samples.png",
                "training_config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                "vae/modeling_vae.py"]
    assert publish_files(folder) == expected
    assert publish_files(folder, include_logs=True) == sorted(expected + ["logs/hfgen-vae/events.out.tfevents.1.host"])
    assert publish_files(folders["ddpm"]) == ["model_index.json", "scheduler/scheduler_config.json",
                                              "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]


def test_publish_refuses_folders_that_would_not_load(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nothing' is not a folder"):
        publish_files(tmp_path / "nothing")
    folder = tmp_path / "no-weights"
    shutil.copytree(folders["hvae"], folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        publish_files(folder)
    old = tmp_path / "old"
    shutil.copytree(folders["vae"], old)
    (old / "pipeline_vae.py").unlink()
    with pytest.raises(FileNotFoundError, match="pipeline_vae.py is missing"):
        publish_files(old)
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({**index, "_class_name": "VAEPipeline"}))
    with pytest.raises(ValueError, match="save it again in the current layout"):
        publish_files(old)


class HubCalls:
    """Records the calls hfgen makes to huggingface_hub's create_repo, create_branch and upload_folder."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("create_repo", "create_branch", "upload_folder"):
            monkeypatch.setattr(f"hfgen.hub.{name}", self._recorder(name))

    def _recorder(self, name):
        def record(*args, **kwargs):
            if name == "upload_folder":  # what the folder holds at upload time
                kwargs["_files_then"] = sorted(p.relative_to(kwargs["folder_path"]).as_posix()
                                               for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())
            self.calls.append((name, args, kwargs))
            if name == "create_repo":
                return type("RepoUrl", (), {"repo_id": args[0]})()
            return type("CommitInfo", (), {"commit_url": "https://hub.example/commit/1"})()
        return record


def test_cli_publish_hands_the_selection_to_huggingface_hub(folders, tmp_path, monkeypatch, capsys):
    hub = HubCalls(monkeypatch)
    folder = tmp_path / "ddpm"
    shutil.copytree(folders["ddpm"], folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_text("x")
    assert main(["publish", str(folder), "--repo-id", "someone/ddpm", "--dry-run"]) == 0
    assert hub.calls == [] and json.loads(capsys.readouterr().out)["files"] == publish_files(folder)
    assert main(["publish", str(folder), "--repo-id", "someone/ddpm", "--private", "--revision", "exp",
                 "--commit-message", "first model"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["commit_url"] == "https://hub.example/commit/1" and printed["revision"] == "exp"
    assert [call[0] for call in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1:] == (("someone/ddpm",), {"private": True, "exist_ok": True, "repo_type": "model",
                                                    "token": None})
    assert hub.calls[1][1:] == (("someone/ddpm",), {"branch": "exp", "exist_ok": True, "repo_type": "model",
                                                    "token": None})
    upload = hub.calls[2][2]
    assert upload["repo_id"] == "someone/ddpm" and upload["folder_path"] == str(folder)
    assert upload["allow_patterns"] == publish_files(folder) and "checkpoints/optimizer.bin" not in upload["allow_patterns"]
    assert upload["revision"] == "exp" and upload["commit_message"] == "first model" and upload["repo_type"] == "model"
    assert main(["publish", str(tmp_path / "missing"), "--repo-id", "someone/x"]) == 2
    assert "missing" in capsys.readouterr().err and len(hub.calls) == 3


def test_save_pretrained_push_to_hub_publishes_the_saved_folder(folders, tmp_path, monkeypatch):
    hub = HubCalls(monkeypatch)
    pipe = HierarchicalVAEPipeline.from_pretrained(folders["hvae"])
    pipe.save_pretrained(tmp_path / "hvae", push_to_hub=True, repo_id="someone/hvae", private=True)
    assert [call[0] for call in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][2]["private"] is True
    assert hub.calls[1][2]["allow_patterns"] == publish_files(tmp_path / "hvae") == [
        "model_index.json", "pipeline_hvae.py", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "vae/modeling_hvae.py"]


# ---------------------------------------------------------------------------------------------- training + card
@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A tiny VAE trained with --push_to_hub (huggingface_hub's functions recorded, not called)."""
    out = tmp_path_factory.mktemp("push") / "vae"
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = HubCalls(monkeypatch)
        args = build_parser(VAEFamily()).parse_args([
            "--output_dir", str(out), "--preset", "tiny", "--max_train_samples", "64", "--max_train_steps", "3",
            "--final_eval_max_samples", "16", "--final_importance_samples", "2", "--num_sample_images", "4",
            "--report_to", "none", "--push_to_hub", "--hub_model_id", "someone/tiny-vae", "--hub_private_repo",
            "--hub_revision", "run-1"])
        train(VAEFamily(), args)
        reset_accelerate_state()
    return out, hub.calls


@requires_fashion_mnist
def test_training_creates_the_repo_first_and_uploads_the_final_folder(pushed):
    out, calls = pushed
    # the repo is created before training (a missing token stops the run early), then again (exist_ok) to publish
    assert [call[0] for call in calls] == ["create_repo", "create_repo", "create_branch", "upload_folder"]
    assert calls[0][1] == calls[1][1] == ("someone/tiny-vae",) and calls[0][2]["private"] is calls[1][2]["private"] is True
    assert calls[2][2]["branch"] == "run-1"
    upload = calls[3][2]
    assert upload["allow_patterns"] == publish_files(out) and upload["folder_path"] == str(out)
    assert {"README.md", "samples.png", "metrics.json", "pipeline_vae.py", "vae/modeling_vae.py",
            "vae/diffusion_pytorch_model.safetensors"} <= set(upload["allow_patterns"])
    assert not any(name.startswith(("checkpoints/", "logs/")) for name in upload["allow_patterns"])
    assert upload["revision"] == "run-1" and "bits/dim" in upload["commit_message"]
    assert 'VAEPipeline.from_pretrained("someone/tiny-vae")' in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        from hfgen.training.arguments import resolve_config

        resolve_config(build_parser(VAEFamily()).parse_args(["--output_dir", "x", "--push_to_hub"]), VAEFamily())


def _check_card(card: ModelCard, metrics: dict, family_name: str) -> None:
    data = yaml.safe_load(card.content.split("---")[1])  # the YAML header as the Hub parses it
    conditional = bool(metrics.get("class_names"))
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    assert data["library_name"] == "diffusers" and data.get("pipeline_tag") == (None if conditional else task)
    assert data["license"] == "apache-2.0"
    assert set(data["tags"]) == {"hfgen", family_name, task}
    if metrics["dataset"] == "fashion_mnist":
        assert data["datasets"] == ["zalando-datasets/fashion_mnist"]
    (entry,) = data["model-index"]
    results = {result["task"]["type"]: result for result in entry["results"]}
    # a conditional model's null-class bounds are of unconditional generation
    assert set(results) == ({task, "unconditional-image-generation"} if conditional else {task})
    result = results[task]
    # the split by the name `hfgen evaluate --split` takes; how many of its images: num_samples
    split, _, count = metrics["split"].partition("[:")
    assert result["dataset"]["split"] == split and result["dataset"]["name"] == metrics["dataset"]
    assert all(m["args"]["num_samples"] == metrics["num_samples"] for m in result["metrics"] if "elbo" in m["type"])
    if count:
        assert int(count.rstrip("]")) == metrics["num_samples"]
    # every result group: a conditional model files its null-class bounds under unconditional generation
    reported = {m["type"]: m["value"] for group in entry["results"] for m in group["metrics"]}
    bounds = {"bits_per_dim_elbo", "bits_per_dim_iw", "nats_per_image_elbo", "nats_per_image_iw"}
    metric_keys = bounds | {f"{key}_given_label" for key in bounds} | {"fd_fmnist", "kid_fmnist", "precision", "recall",
                                                                     "fd_fmnist_greedy", "kid_fmnist_greedy"}
    # a class-conditional folder: -log p(x) under the plain keys, -log p(x | y) under *_given_label (older
    # metrics.json files are read that way)
    expected = {k: v for k, v in conditional_metrics_layout(metrics).items() if k in metric_keys}
    if family_name in ("ddpm", "ldm"):  # one bound: the *_iw keys repeat it
        expected = {k: v for k, v in expected.items() if "_iw" not in k}
    assert reported == pytest.approx(expected) and len(reported) >= 2
    body = card.text
    assert "![samples](samples.png)" in body and "## Limits" in body and "## Compute" in body
    for row in card_metrics(family_name, metrics):
        assert f"| {row['name']} | {row['value']:.4f}" in body
    if family_name != "ddpm":
        assert "trust_remote_code=True" in body
    assert card.data.to_dict()["model-index"] == data["model-index"]  # huggingface_hub reads it back the same


@requires_fashion_mnist
def test_trained_card_renders_and_its_model_index_matches_metrics_json(pushed):
    out, _ = pushed
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text())
    _check_card(card, metrics, "vae")
    assert "samples.png" in publish_files(out)


@pytest.mark.parametrize("name", ["vae-small-cpu", "hvae-small-cpu", "ddpm-small-cpu", "ldm-small-cpu"])
def test_committed_example_cards_are_current(name):
    folder = EXAMPLE_CARDS / name
    metrics = json.loads((folder / "metrics.json").read_text())
    training_config = json.loads((folder / "training_config.json").read_text())
    family = FAMILY_CLASSES[metrics["family"]]()
    card = render_model_card(family, metrics, training_config, f"hfgen-examples/{name}")
    assert str(card).strip() == (folder / "README.md").read_text().strip(), (
        f"docs/model_cards/{name}/README.md is stale: python scripts/render_model_cards.py docs/model_cards/{name}")
    _check_card(ModelCard.load(folder / "README.md"), metrics, family.name)
    assert (folder / "samples.png").is_file()


def test_a_conditional_card_files_the_bound_on_log_p_x_under_the_plain_keys():
    """The class-conditional latent diffusion example's metrics.json predates the plain keys holding -log p(x) (they
    held the bound given the label, the null class's sat under "unconditional"): its card is rendered the current
    way, the null class's bound under the plain keys and the bound given the label under *_given_label."""
    metrics = json.loads((EXAMPLE_CARDS / "ldm-small-cpu" / "metrics.json").read_text())
    assert metrics["likelihood"]["given"] == "class label" and "unconditional" in metrics
    rows = {row["key"]: row for row in card_metrics("ldm", metrics)}
    assert rows["bits_per_dim_elbo"]["value"] == metrics["unconditional"]["bits_per_dim_elbo"]
    assert rows["bits_per_dim_elbo"]["name"].endswith("of log p(x) (null class)")
    assert rows["bits_per_dim_elbo_given_label"]["value"] == metrics["bits_per_dim_elbo"]
    assert rows["bits_per_dim_elbo_given_label"]["name"].endswith("of log p(x | y) given the label")
    card = render_model_card(FAMILY_CLASSES["ldm"](), metrics, {}, "someone/ldm")
    index = card.data.to_dict()["model-index"][0]["results"]
    values = {m["type"]: m["value"] for result in index for m in result["metrics"]}
    assert values["bits_per_dim_elbo"] == metrics["unconditional"]["bits_per_dim_elbo"]
    assert "_null_class" not in str(index)
    # a card from the current layout reads the same
    current = conditional_metrics_layout(metrics)
    assert current["likelihood"]["given"] == "nothing (null class)" and "unconditional" not in current
    assert card_metrics("ldm", current) == card_metrics("ldm", metrics)


def test_card_reports_sample_quality_metrics_when_present():
    metrics = json.loads((EXAMPLE_CARDS / "vae-small-cpu" / "metrics.json").read_text())
    metrics.update(fd_fmnist=12.5, kid_fmnist=0.01, kid_fmnist_std=0.002, precision=0.7, recall=0.4,
                   num_generated=1000)
    card = render_model_card(VAEFamily(), metrics, {}, "someone/vae")
    _check_card(card, metrics, "vae")
    assert "| KID in hfgen's Fashion-MNIST features | 0.0100 ± 0.0020 |" in card.text


# ---------------------------------------------------------------------------------------------- plain diffusers
BLOCK_HFGEN = textwrap.dedent("""
    import sys

    class BlockHfgen:  # this process has only diffusers: hfgen's editable install is hidden
        def find_spec(self, name, path=None, target=None):
            if name == "hfgen" or name.startswith("hfgen."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, BlockHfgen())
    try:
        import hfgen
        raise SystemExit("hfgen is importable; the test would prove nothing")
    except ModuleNotFoundError:
        pass
""")

PLAIN_DIFFUSERS = BLOCK_HFGEN + textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline

    results = {}
    for name, sources, out in json.loads(sys.argv[1]):
        steps = {"num_inference_steps": 5} if name == "ddpm" else {}
        for i, source in enumerate(sources):
            # A repo id is loaded at revision "main": olah in offline mode answers /api/models/<id>/revision/main
            # from its mirrors but not /api/models/<id> (it then looks only in its own cache), which diffusers asks
            # when no revision is given. The Hub answers both.
            hub = {"revision": "main"} if not source.startswith("/") else {}
            if name != "ddpm":
                try:
                    DiffusionPipeline.from_pretrained(source, **hub)
                    raise SystemExit(f"{source} loaded without trust_remote_code")
                except ValueError as error:
                    assert "trust_remote_code" in str(error), error
                ran = [m for m in sys.modules if m.endswith((f".pipeline_{name}", f".modeling_{name}"))]
                assert i > 0 or not ran, f"code of {source} ran before the refusal: {ran}"
            pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=name != "ddpm", **hub)
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator().manual_seed(0)
            np.save(f"{out}-{i}.npy", pipe(batch_size=2, generator=generator, output_type="np", **steps).images)
            model = pipe.unet if name == "ddpm" else pipe.vae
            results[f"{name}-{i}"] = [type(pipe).__module__, type(pipe).__name__, type(model).__module__]
    print(json.dumps(results))
""")


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _run(code: str, argument, env, cwd) -> dict:
    result = subprocess.run([PYTHON, "-c", code, json.dumps(argument)], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _same_samples(out: Path, folder: Path, count: int) -> None:
    """Every load in one process gave the same samples, bit for bit, and those are the samples of the model that was
    saved (computed in this process, so equal up to float rounding: the thread counts differ)."""
    first = np.load(f"{out}-0.npy")
    for i in range(1, count):
        np.testing.assert_array_equal(np.load(f"{out}-{i}.npy"), first)
    np.testing.assert_allclose(first, _expected(folder), atol=1e-5)


def test_plain_diffusers_loads_local_folders_only_with_trust_remote_code(folders, tmp_path):
    jobs = [(name, [str(folders[name])], str(tmp_path / name)) for name in ("vae", "hvae", "ddpm")]
    results = _run(PLAIN_DIFFUSERS, jobs, _env(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    assert results["vae-0"] == ["diffusers_modules.local.pipeline_vae", "VAEPipeline",
                                "diffusers_modules.local.modeling_vae"]
    assert results["hvae-0"][1:] == ["HierarchicalVAEPipeline", "diffusers_modules.local.modeling_hvae"]
    assert results["ddpm-0"][:2] == ["diffusers.pipelines.ddpm.pipeline_ddpm", "DDPMPipeline"]
    for name, _, out in jobs:
        _same_samples(out, folders[name], 1)


# ---------------------------------------------------------------------------------------------- repo ids over HTTP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub_server(folders, tmp_path_factory):
    """olah on 127.0.0.1 serving, offline, one git repo per family (``hfgen-test/<family>``) that holds exactly the
    files ``hfgen publish`` selects; yields the endpoint and stops the server afterwards, whatever happened."""
    pytest.importorskip("olah", reason="olah (the Hub mirror server of the dev extra) is not installed")
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is needed to build the mirrored repos")
    root = tmp_path_factory.mktemp("olah")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "hfgen", "GIT_AUTHOR_EMAIL": "hfgen@localhost",
               "GIT_COMMITTER_NAME": "hfgen", "GIT_COMMITTER_EMAIL": "hfgen@localhost", "GIT_CONFIG_GLOBAL": os.devnull}
    for name, folder in folders.items():
        repo = root / "mirrors" / "models" / "hfgen-test" / name
        for file in publish_files(folder):
            (repo / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / file, repo / file)
        for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"hfgen publish {name}"]):
            subprocess.run([git, *command], cwd=repo, env=git_env, check=True)
    port = _free_port()
    (root / "olah.toml").write_text(textwrap.dedent(f"""
        [basic]
        host = "127.0.0.1"
        port = {port}
        repos-path = "{root / 'cache'}"
        mirrors-path = ["{root / 'mirrors'}"]

        [accessibility]
        offline = true
    """))
    log = open(root / "olah.log", "w")
    server = subprocess.Popen([PYTHON, "-m", "olah.server", "-c", str(root / "olah.toml"), "--host", "127.0.0.1",
                               "--port", str(port), "--log-path", str(root / "logs")],
                              cwd=root, stdout=log, stderr=subprocess.STDOUT, env=_env(root))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/api/models/hfgen-test/vae/revision/main", timeout=5) as r:
                    if json.load(r).get("sha"):
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"olah did not answer on {endpoint}:\n{(root / 'olah.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


HFGEN_BY_REPO_ID = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from hfgen import HierarchicalVAEPipeline, VAEPipeline
    from hfgen.families import load_pipeline

    results = {}
    for name, sources, out in json.loads(sys.argv[1]):
        steps = {"num_inference_steps": 5} if name == "ddpm" else {}
        for i, source in enumerate(sources):
            if name == "ddpm":
                pipe, family = load_pipeline(source)       # what hfgen sample / evaluate do
            else:
                pipe = {"vae": VAEPipeline, "hvae": HierarchicalVAEPipeline}[name].from_pretrained(source)
                assert type(pipe.vae).__module__.startswith("hfgen.models."), type(pipe.vae)
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator().manual_seed(0)
            np.save(f"{out}-{i}.npy", pipe(batch_size=2, generator=generator, output_type="np", **steps).images)
            results[f"{name}-{i}"] = type(pipe).__name__
    try:
        VAEPipeline.from_pretrained("hfgen-test/does-not-exist")
    except FileNotFoundError as error:
        results["missing"] = str(error)
    results["downloaded_code"] = sorted(p.name for p in (Path(sys.argv[2]) / "hub").rglob("*.py"))
    print(json.dumps(results))
""")


def test_hfgen_loads_each_family_by_repo_id_with_the_same_samples(folders, hub_server, tmp_path):
    env = _env(tmp_path, HF_ENDPOINT=hub_server)
    jobs = [(name, [str(folders[name]), f"hfgen-test/{name}"], str(tmp_path / name)) for name in ("vae", "hvae", "ddpm")]
    result = subprocess.run([PYTHON, "-c", HFGEN_BY_REPO_ID, json.dumps(jobs), str(tmp_path / "hf-home")], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["vae-1"] == "VAEPipeline" and results["hvae-1"] == "HierarchicalVAEPipeline"
    assert results["ddpm-1"] == "DDPMPipeline"
    assert "'hfgen-test/does-not-exist' is neither a local folder nor a model repo on " + hub_server in results["missing"]
    assert results["downloaded_code"] == []  # hfgen fetches configs and safetensors weights only
    for name, _, out in jobs:
        _same_samples(out, folders[name], 2)


def test_plain_diffusers_loads_each_family_by_repo_id(folders, hub_server, tmp_path):
    jobs = [(name, [str(folders[name]), f"hfgen-test/{name}"], str(tmp_path / name)) for name in ("vae", "hvae", "ddpm")]
    results = _run(PLAIN_DIFFUSERS, jobs, _env(tmp_path, HF_ENDPOINT=hub_server), tmp_path)
    assert results["vae-1"][1] == "VAEPipeline" and results["vae-1"][2].startswith("diffusers_modules.local")
    assert results["hvae-1"][1] == "HierarchicalVAEPipeline"
    assert results["ddpm-1"][1] == "DDPMPipeline"
    for name, _, out in jobs:
        _same_samples(out, folders[name], 2)


def test_no_published_file_of_a_run_on_a_local_folder_holds_an_absolute_path(tmp_path):
    import PIL.Image

    data = tmp_path / "private" / "my_garments"
    for split, count in (("train", 24), ("test", 4)):
        (data / split).mkdir(parents=True)
        for index in range(count):
            pixels = np.random.default_rng(index).integers(0, 256, (28, 28), dtype=np.uint8)
            PIL.Image.fromarray(pixels, mode="L").save(data / split / f"{index:02d}.png")
    out = tmp_path / "private" / "runs" / "vae-local"
    train(VAEFamily(), build_parser(VAEFamily()).parse_args([
        "--output_dir", str(out), "--preset", "tiny", "--dataset", str(data), "--max_train_steps", "2",
        "--report_to", "none", "--num_sample_images", "1"]))
    reset_accelerate_state()
    published = publish_files(out)
    assert {"README.md", "metrics.json", "training_config.json"} <= set(published)
    for name in published:
        if name.endswith((".json", ".md", ".py")):
            text = (out / name).read_text()
            assert str(tmp_path) not in text and "/private/" not in text, name
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "my_garments (local data)"
    config = json.loads((out / "training_config.json").read_text())
    assert config["dataset"] == "my_garments (local data)" and config["output_dir"] == "vae-local"
    card = ModelCard.load(out / "README.md")
    assert "datasets" not in card.data.to_dict()  # a local folder is not a Hub data set


def _hfgen_imports(module_file: Path) -> set[str]:
    """The hfgen modules a module file imports anywhere in it (top level or inside functions), as dotted names
    relative to the package (``"files"``, ``"families.base"``)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfgen."):
            names.add(node.module.removeprefix("hfgen."))
    return names


def test_folder_code_and_publishing_do_not_import_each_other():
    """remote_code.py (the folder layout and its loading) sits below hub.py (cards, publishing): it imports no hfgen
    module but files.py, and the pipelines' hooks, which need both, live above them in pipeline_hooks.py."""
    package = ROOT / "hfgen"
    assert _hfgen_imports(package / "remote_code.py") == {"files"}
    assert "pipeline_hooks" not in _hfgen_imports(package / "hub.py")
    assert {"hub", "remote_code"} <= _hfgen_imports(package / "pipeline_hooks.py")
