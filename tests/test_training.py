"""The shared training core, exercised through the VAE family on tiny configs (CPU)."""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from hfgen import VAEPipeline
from hfgen.families import VAEFamily
from hfgen.training import BatchSchedule, build_parser, list_checkpoints, lr_factor, train

from conftest import PYTHON, ROOT, requires_fashion_mnist, reset_accelerate_state

pytestmark = requires_fashion_mnist

TINY_ARGS = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "256",
             "--final_eval_max_samples", "64", "--report_to", "none"]


def _args(output_dir, *extra):
    return build_parser(VAEFamily()).parse_args(["--output_dir", str(output_dir), *TINY_ARGS, *extra])


def _weights(folder):
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


class _Wrapped(VAEFamily):
    """The VAE family with a hook into its loss, to inject failures the way a real run meets them."""

    def __init__(self, hook):
        self.hook = hook

    def loss(self, model, images, step, generator, config):
        loss, logs = super().loss(model, images, step, generator, config)
        return self.hook(model, step, loss), logs


def test_end_to_end_folder(tmp_path):
    out = tmp_path / "run"
    metrics = train(VAEFamily(), _args(out, "--max_train_steps", "6", "--eval_steps", "3", "--sample_steps", "3",
                                       "--checkpointing_steps", "2", "--report_to", "tensorboard"))
    for name in ("model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                 "samples.png", "metrics.json", "README.md", "training_config.json", "samples/step-0000003.png"):
        assert (out / name).is_file(), name
    assert list((out / "logs").rglob("events.out.tfevents.*")), "tensorboard logs"
    # retention limit 2: checkpoints 4 and 6 remain
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    for key in ("bits_per_dim_elbo", "bits_per_dim_iw", "nats_per_image_elbo", "nats_per_image_iw",
                "num_samples", "importance_samples", "train_seconds", "train_img_per_s", "skipped_steps"):
        assert key in saved, key
    assert saved["bits_per_dim_iw"] <= saved["bits_per_dim_elbo"] + 1e-6
    assert saved["train_steps"] == 6 and saved["skipped_steps"] == 0 and saved["num_samples"] == 64
    pipe = VAEPipeline.from_pretrained(out)
    assert pipe(batch_size=2, output_type="np").images.shape == (2, 28, 28, 1)  # Fashion-MNIST's own size
    card = (out / "README.md").read_text()
    assert "unconditional-image-generation" in card and "bits/dim" in card


def test_training_lowers_the_bound(tmp_path):
    metrics_short = train(VAEFamily(), _args(tmp_path / "a", "--max_train_steps", "1", "--no_ema"))
    reset_accelerate_state()
    metrics_long = train(VAEFamily(), _args(tmp_path / "b", "--max_train_steps", "60", "--no_ema"))
    assert metrics_long["bits_per_dim_elbo"] < metrics_short["bits_per_dim_elbo"] - 0.5


@pytest.mark.parametrize("optimizer", ["adamw", "adamax"])
def test_resume_after_crash_is_exact(tmp_path, optimizer):
    common = ("--max_train_steps", "8", "--checkpointing_steps", "4", "--checkpoints_total_limit", "3",
              "--optimizer", optimizer)
    straight = tmp_path / "straight"
    train(VAEFamily(), _args(straight, *common))
    reset_accelerate_state()

    def crash_at_step_6(model, step, loss):
        if step == 6:
            raise RuntimeError("simulated crash")
        return loss

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_Wrapped(crash_at_step_6), _args(crashed, *common))
    reset_accelerate_state()
    assert [p.name for p in list_checkpoints(crashed)] == ["checkpoint-4"]
    # a crash while writing a later checkpoint leaves a .tmp folder, which is never resumed from
    (crashed / "checkpoints" / "checkpoint-7.tmp").mkdir()
    (crashed / "checkpoints" / "checkpoint-7.tmp" / "model.safetensors").write_bytes(b"half-written")
    train(VAEFamily(), _args(crashed, *common, "--resume_from_checkpoint", "latest"))
    a, b = _weights(straight), _weights(crashed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    raw_a = load_file(straight / "checkpoints" / "checkpoint-8" / "model.safetensors")
    raw_b = load_file(crashed / "checkpoints" / "checkpoint-8" / "model.safetensors")
    assert max((raw_a[k] - raw_b[k]).abs().max().item() for k in raw_a) <= 1e-6
    assert not (crashed / "checkpoints" / "checkpoint-7.tmp").exists()


def test_non_finite_loss_is_skipped_not_applied(tmp_path):
    snapshots = {}

    def nan_at_step_3(model, step, loss):
        if step in (3, 4):
            snapshots[step] = [p.detach().clone() for p in model.parameters()]
        return loss * float("nan") if step == 3 else loss

    metrics = train(_Wrapped(nan_at_step_3), _args(tmp_path / "run", "--max_train_steps", "6"))
    assert metrics["skipped_steps"] == 1
    assert metrics["train_steps"] == 6
    # the parameters seen at step 4 are those of step 3: the NaN update was never applied
    for before, after in zip(snapshots[3], snapshots[4]):
        assert torch.equal(before, after)
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "run").values())
    assert metrics["bits_per_dim_elbo"] == metrics["bits_per_dim_elbo"]  # finite, not NaN


def test_logged_training_figures_are_means_over_the_logging_window(tmp_path, monkeypatch):
    """Every logging_steps steps the loop logs each training figure as the mean over the window's applied steps
    (a skipped step's non-finite loss stays out of it), not the last step's value."""
    from accelerate import Accelerator

    losses, logged = {}, {}

    def nan_at_step_6(model, step, loss):
        losses[step] = float(loss.detach())
        return loss * float("nan") if step == 6 else loss

    def record(self, values, step=None, log_kwargs=None):
        logged[step] = values

    monkeypatch.setattr(Accelerator, "log", record)
    train(_Wrapped(nan_at_step_6), _args(tmp_path / "run", "--max_train_steps", "8", "--logging_steps", "4"))
    assert logged[4]["train/loss"] == pytest.approx(sum(losses[s] for s in range(4)) / 4, rel=1e-5)
    assert logged[8]["train/loss"] == pytest.approx((losses[4] + losses[5] + losses[7]) / 3, rel=1e-5)
    assert logged[8]["train/skipped_steps"] == 1


def test_two_process_cpu_run(tmp_path, run_env):
    out = tmp_path / "ddp"
    # On a machine without a GPU, `--multi_gpu` starts N gloo processes on the CPU (hfgen asks Accelerate for
    # the CPU when no accelerator is present); `--cpu` alone would start a single process.
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "training/train_vae.py",
           "--output_dir", str(out), *TINY_ARGS, "--max_train_steps", "4", "--checkpointing_steps", "2"]
    result = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["images_seen"] == 4 * 2 * 16
    assert VAEPipeline.from_pretrained(out).vae.config.in_channels == 1
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


def test_lr_schedule_and_batch_schedule():
    assert lr_factor(0, 0.0, 4, "cosine") == 0.25
    assert lr_factor(10, 0.0, 4, "cosine") == 1.0
    assert abs(lr_factor(10, 1.0, 4, "cosine")) < 1e-12
    assert lr_factor(10, 0.5, 4, "linear") == 0.5
    two = [BatchSchedule(100, 10, seed=3, process_index=r, num_processes=2) for r in range(2)]
    seen = torch.cat([s.indices(i) for s in two for i in range(5)])
    assert sorted(seen.tolist()) == list(range(100))  # one epoch: every image once, no overlap
    again = BatchSchedule(100, 10, seed=3, process_index=1, num_processes=2)
    assert torch.equal(again.indices(7), two[1].indices(7))
    with pytest.raises(ValueError, match="too few"):
        BatchSchedule(10, 8, seed=0, process_index=0, num_processes=2)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="--learning_rate must be > 0, got -1"):
        train(VAEFamily(), _args(tmp_path / "x", "--learning_rate", "-1"))
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        train(VAEFamily(), _args(tmp_path / "y", "--resume_from_checkpoint", str(tmp_path / "no-such-checkpoint")))


def test_presets_fill_unset_flags_and_flags_win():
    from hfgen.families import HVAEFamily
    from hfgen.training.arguments import resolve_config

    hvae = HVAEFamily()
    cfg, _ = resolve_config(build_parser(hvae).parse_args(["--output_dir", "x", "--preset", "small"]), hvae)
    assert cfg.adam_beta2 == 0.99 and cfg.train_batch_size == 16  # the preset's
    cfg, _ = resolve_config(build_parser(hvae).parse_args(["--output_dir", "x", "--preset", "small",
                                                            "--adam-beta2", "0.999"]), hvae)
    assert cfg.adam_beta2 == 0.999  # the flag's
    cfg, _ = resolve_config(build_parser(VAEFamily()).parse_args(["--output_dir", "x"]), VAEFamily())
    assert cfg.adam_beta2 == 0.999  # no preset sets it: the common default
    with pytest.raises(ValueError, match=r"--adam_beta2 must be in \[0, 1\), got 1.0"):
        resolve_config(build_parser(hvae).parse_args(["--output_dir", "x", "--adam_beta2", "1"]), hvae)


def test_bf16_autocast_and_gradient_accumulation(tmp_path):
    metrics = train(VAEFamily(), _args(tmp_path / "run", "--max_train_steps", "3", "--mixed_precision", "bf16",
                                       "--gradient_accumulation_steps", "2", "--train_batch_size", "8"))
    assert metrics["mixed_precision"] == "bf16"
    assert metrics["images_seen"] == 3 * 2 * 8
    assert metrics["skipped_steps"] == 0
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "run").values())


def test_wall_clock_budget_stops_the_run(tmp_path):
    metrics = train(VAEFamily(), _args(tmp_path / "run", "--max_train_steps", "100000",
                                       "--max_train_minutes", "0.002"))
    assert 1 <= metrics["train_steps"] < 100000
    assert (tmp_path / "run" / "model_index.json").is_file()


def test_torch_compile_trains_the_same_weights_as_eager(tmp_path):
    """--torch_compile (inductor on CPU; the first step compiles, about a minute here) takes the same steps."""
    steps = 3
    common = ("--max_train_steps", str(steps), "--no_ema", "--final_eval_max_samples", "16")
    eager_metrics = train(VAEFamily(), _args(tmp_path / "eager", *common))
    reset_accelerate_state()
    metrics = train(VAEFamily(), _args(tmp_path / "compiled", *common, "--torch_compile"))
    assert metrics["train_steps"] == steps and metrics["skipped_steps"] == 0
    assert metrics["bits_per_dim_elbo"] == pytest.approx(eager_metrics["bits_per_dim_elbo"], rel=1e-6)
    # Adam divides each gradient by its own running scale, so where a gradient is near zero the last bits of
    # inductor's differently ordered (on AVX-512 CPUs, differently vectorised) sums move a weight by a visible
    # fraction of the learning rate (1.0e-5 of a possible 6e-3 on an AMD EPYC with AVX-512): the weights must agree
    # to 1% of the most that the steps can move them (the learning rate per step).
    learning_rate = VAEFamily.presets["tiny"].training["learning_rate"]
    eager, compiled = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    for key in eager:
        assert torch.allclose(eager[key], compiled[key], atol=0.01 * learning_rate * steps, rtol=0), key


def test_resume_from_checkpoint_by_name_is_looked_up_in_the_output_folder(tmp_path, monkeypatch):
    from hfgen.training.checkpoints import resolve_resume_path

    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-500").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # not the output folder: diffusers' scripts resolve the name against --output_dir
    assert resolve_resume_path(run, "checkpoint-500") == run / "checkpoints" / "checkpoint-500"
    assert resolve_resume_path(run, str(run / "checkpoints" / "checkpoint-500")) == run / "checkpoints" / "checkpoint-500"
    assert resolve_resume_path(run, "latest") == run / "checkpoints" / "checkpoint-500"
    with pytest.raises(FileNotFoundError, match="'checkpoint-600' is neither a folder nor a checkpoint in"):
        resolve_resume_path(run, "checkpoint-600")


def test_progress_bars_draw_a_frame_every_10_seconds_into_a_log(monkeypatch):
    import io

    from hfgen.progress import progress_bar

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.delenv("HFGEN_PROGRESS_SECONDS", raising=False)
    bar = progress_bar(total=10, file=log)
    assert bar.mininterval == 10.0
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert log.getvalue().count("\r") <= 3  # the first frame, the last, and at most one between
    monkeypatch.setenv("HFGEN_PROGRESS_SECONDS", "5")
    assert progress_bar(total=1, file=log).mininterval == 5.0


def test_a_mid_training_checkpoint_is_a_pipeline_folder_that_samples(tmp_path, capsys):
    from hfgen.cli import main
    from hfgen.families import load_pipeline

    out = tmp_path / "run"
    train(VAEFamily(), _args(out, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    reset_accelerate_state()
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "model_index.json").is_file() and (checkpoint / "model.safetensors").is_file()
    pipeline, family = load_pipeline(str(checkpoint))  # from_pretrained of the checkpoint folder itself
    assert isinstance(pipeline, VAEPipeline) and family.name == "vae"
    assert main(["sample", str(checkpoint), "--num-images", "4", "--out", str(tmp_path / "grid.png"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "grid.png").is_file()
    # and the run still resumes from it
    train(VAEFamily(), _args(out, "--max_train_steps", "6", "--checkpointing_steps", "2",
                             "--resume_from_checkpoint", "checkpoint-4"))
