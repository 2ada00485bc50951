"""The DDPM family on tiny configs (CPU, T = 100): the training script end to end, a stock DDPMPipeline folder
that plain diffusers loads without hfgen, scheduler swaps, the L_vlb bound, and fast path == plain path."""

import argparse
import json
import math
import os
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from hfgen.cli import main
from hfgen.families import DDPMFamily, VAEFamily
from hfgen.models.ddpm import DiffusionTables, build_scheduler, prior_nats, vlb_term_nats
from hfgen.training import build_parser, train

from conftest import PYTHON, ROOT, requires_fashion_mnist, reset_accelerate_state

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ARGS = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "256", "--report_to", "none"]
#: the script's folder in these tests has learned variances (Nichol & Dhariwal 2021) on the cosine schedule
LEARNED = ["--variance_type", "learned_range", "--beta_schedule", "squaredcos_cap_v2"]


def _args(output_dir, *extra):
    return build_parser(DDPMFamily()).parse_args(["--output_dir", str(output_dir), *TINY_ARGS, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """training/train_ddpm.py --preset tiny (40 steps, 256 images) in a fresh process, as a user runs it."""
    out = tmp_path_factory.mktemp("ddpm") / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [PYTHON, "training/train_ddpm.py", "--output_dir", str(out), *TINY_ARGS, *LEARNED, "--max_train_steps",
           "40", "--checkpointing_steps", "20", "--eval_steps", "40"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@requires_fashion_mnist
def test_script_end_to_end_writes_a_stock_ddpm_folder(trained):
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "metrics.json", "samples.png", "README.md",
                 "training_config.json", "checkpoints/checkpoint-40/model.safetensors"):
        assert (trained / name).is_file(), name
    index = json.loads((trained / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for name in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        assert "hfgen" not in (trained / name).read_text(), name
    scheduler = json.loads((trained / "scheduler/scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 100 and scheduler["prediction_type"] == "epsilon"
    assert scheduler["variance_type"] == "learned_range" and scheduler["beta_schedule"] == "squaredcos_cap_v2"
    assert json.loads((trained / "unet/config.json").read_text())["out_channels"] == 2  # epsilon and v
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["family"] == "ddpm" and metrics["train_steps"] == 40 and metrics["skipped_steps"] == 0
    assert not [key for key in metrics if key.endswith("_iw")]  # no IW bound for a DDPM
    assert metrics["vlb_timesteps"] == 16 and "importance_samples" not in metrics  # the family's default K
    assert "16 stratified timesteps per image" in metrics["estimator"]
    # the validation during training too: 16 timesteps, said so
    assert metrics["validation_vlb_timesteps"] == 16 and metrics["validation_split"] == "validation[:32]"
    assert np.isfinite(metrics["validation_bits_per_dim_elbo"])
    # the padded 32x32 image's bound, over Fashion-MNIST's own 784 dimensions, said so
    assert metrics["num_dims"] == 784 and metrics["bound_over"] == "padded image"
    assert metrics["source_shape"] == [1, 28, 28] and metrics["sample_shape"] == [1, 32, 32]
    assert metrics["split"] == "test[:32]" and metrics["split_size"] == 10000
    assert np.isfinite(metrics["bits_per_dim_elbo"]) and 0 < metrics["bits_per_dim_elbo"] < 30
    assert "L_vlb" in (trained / "README.md").read_text()


@requires_fashion_mnist
def test_folder_loads_and_samples_in_plain_diffusers_without_hfgen(trained):
    script = textwrap.dedent("""
        import importlib.abc, json, sys

        class NoHfgen(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hfgen" or name.startswith("hfgen."):
                    raise ImportError("hfgen is blocked in this process")
                return None

        sys.meta_path.insert(0, NoHfgen())
        try:
            import hfgen  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("hfgen is importable; the test would prove nothing")
        import torch
        from diffusers import DDPMPipeline

        pipe = DDPMPipeline.from_pretrained(sys.argv[1])
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
        assert not any(m == "hfgen" or m.startswith("hfgen.") for m in sys.modules), "hfgen was imported"
        print(json.dumps([list(images.shape), float(images.min()), float(images.max())]))
    """)
    result = subprocess.run([PYTHON, "-I", "-c", script, str(trained)], cwd="/", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shape, low, high = json.loads(result.stdout.strip().splitlines()[-1])
    assert shape == [2, 32, 32, 1]
    assert 0.0 <= low <= high <= 1.0


@requires_fashion_mnist
def test_scheduler_swap_is_deterministic_and_the_vae_refuses_it(trained, tmp_path, capsys):
    from hfgen.families import load_pipeline

    pipeline, family = load_pipeline(str(trained), "cpu")
    assert isinstance(family, DDPMFamily)
    pipeline.set_progress_bar_config(disable=True)
    for name in ("ddim", "dpm-solver++"):
        runs = [family.sample_images(pipeline, 3, torch.Generator().manual_seed(7), scheduler=name, steps=5)
                for _ in range(2)]
        a, b = (np.stack([np.asarray(im) for im in run]) for run in runs)
        assert a.shape == (3, 28, 28) and a.dtype == np.uint8  # the data's own size (trained padded to 32x32)
        assert np.array_equal(a, b), name
    assert type(pipeline.scheduler).__name__ == "DDPMScheduler"  # the loaded pipeline is left as it was
    other = family.sample_images(pipeline, 3, torch.Generator().manual_seed(8), scheduler="ddim", steps=5)
    assert not np.array_equal(np.asarray(other[0]), a[0])
    with pytest.raises(ValueError, match="temperature"):
        family.sample_images(pipeline, 1, torch.Generator(), temperature=0.5)
    with pytest.raises(ValueError, match="scheduler"):
        VAEFamily().sample_images(None, 1, torch.Generator(), scheduler="ddim", steps=5)
    # the CLI: a DDIM grid in 5 steps; the VAE family's refusal surfaces as exit status 2
    assert main(["sample", str(trained), "--num-images", "4", "--scheduler", "dpm-solver++", "--steps", "5",
                 "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scheduler"] == "dpm-solver++"
    assert main(["sample", str(trained), "--num-images", "2", "--scheduler", "ddim", "--steps", "3", "--clip-sample",
                 "--timestep-spacing", "trailing", "--out", str(tmp_path / "c.png")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["clip_sample"], printed["timestep_spacing"]) == (True, "trailing")
    assert main(["sample", str(trained), "--steps", "1000", "--out", str(tmp_path / "h.png")]) == 2
    assert "steps" in capsys.readouterr().err


@requires_fashion_mnist
def test_evaluate_prints_the_bound_in_bits_per_dim(trained, capsys):
    assert main(["evaluate", str(trained), "--max-samples", "32", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    saved = json.loads((trained / "metrics.json").read_text())
    assert printed["family"] == "ddpm" and printed["num_samples"] == 32
    # 16 timesteps per image unless asked otherwise, said in the JSON and on stderr
    assert "bits_per_dim_iw" not in printed and printed["vlb_timesteps"] == 16 and printed["split"] == "test[:32]"
    assert "16 stratified timesteps per image" in printed["estimator"] and printed["estimator"] in captured.err
    # same images, timesteps per image and seed as the end of training: the same figure
    assert printed["bits_per_dim_elbo"] == pytest.approx(saved["bits_per_dim_elbo"], rel=1e-4)


@requires_fashion_mnist
def test_evaluate_by_default_lands_within_its_stated_error_of_every_term_summed(trained, capsys):
    """The default estimate (16 stratified timesteps per image) against L_vlb with all T = 100 terms summed, on the
    same 32 test images."""
    assert main(["evaluate", str(trained), "--max-samples", "32", "--device", "cpu"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(trained), "--max-samples", "32", "--vlb-timesteps", "100", "--device", "cpu"]) == 0
    every_term = json.loads(capsys.readouterr().out)
    assert every_term["vlb_timesteps"] == 100 and "every one of its T = 100 terms" in every_term["estimator"]
    error = default["bits_per_dim_elbo"] - every_term["bits_per_dim_elbo"]
    assert abs(error) < 2 * default["bits_per_dim_elbo_stderr"], (error, default["bits_per_dim_elbo_stderr"])


@requires_fashion_mnist
def test_bound_drops_with_training(trained, tmp_path):
    untrained = train(DDPMFamily(), _args(tmp_path / "one", *LEARNED, "--max_train_steps", "1", "--no_ema",
                                          "--num_sample_images", "1"))
    trained_metrics = json.loads((trained / "metrics.json").read_text())  # 40 steps; same eval images and seed
    assert np.isfinite(untrained["bits_per_dim_elbo"])
    assert trained_metrics["bits_per_dim_elbo"] < untrained["bits_per_dim_elbo"] - 1.0


def test_bound_terms_of_a_perfect_denoiser():
    """With the true noise as the network's output every reverse-step KL is zero, and the decoder's NLL is that of
    a Gaussian centred on the right bin with the decoder's fixed variance (Ho et al.'s "distortion"); any other
    output costs more. The prior term is tiny."""
    scheduler = build_scheduler(dict(num_train_timesteps=100, beta_schedule="linear"))
    tables = DiffusionTables(scheduler, "cpu")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 255, (4, 1, 8, 8), generator=gen, dtype=torch.uint8)  # interior bins
    x0 = images.float() / 127.5 - 1.0
    betas = scheduler.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    decoder_std = (betas[1] * (1 - abar[0]) / (1 - abar[1])).sqrt().item()
    decoder_expected = -64 * math.log(math.erf((1 / 255) / (decoder_std * math.sqrt(2))))
    for step in (0, 1, 50, 99):
        t = torch.full((4,), step)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = tables.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * x0 + tables.sqrt_one_minus_alphas_cumprod[t].view(
            -1, 1, 1, 1) * noise
        oracle = vlb_term_nats(tables, x0, x_t, t, noise)
        wrong = vlb_term_nats(tables, x0, x_t, t, noise + 0.1 * torch.randn(x0.shape, generator=gen))
        expected = decoder_expected if step == 0 else 0.0
        assert torch.allclose(oracle, torch.full_like(oracle, expected), atol=0.05, rtol=1e-3), (step, oracle)
        assert torch.all(wrong > oracle), step
    assert torch.all(prior_nats(tables, x0) < 0.05 * 64)


@requires_fashion_mnist
def test_fast_path_and_plain_path_agree(tmp_path):
    curves = {}

    class Recording(DDPMFamily):
        def loss(self, model, images, step, generator, config):
            loss, logs = super().loss(model, images, step, generator, config)
            self.curve.append(float(loss.detach()))
            return loss, logs

    for name, extra in (("fast", ()), ("plain", ("--no_channels_last",))):
        family = Recording()
        family.curve = []
        metrics = train(family, _args(tmp_path / name, "--max_train_steps", "12", "--final_eval_max_samples", "16",
                                      "--num_sample_images", "1", *extra))
        reset_accelerate_state()
        curves[name] = (np.array(family.curve), metrics["bits_per_dim_elbo"])
    (fast, fast_bpd), (plain, plain_bpd) = curves["fast"], curves["plain"]
    assert fast.shape == plain.shape == (12,)
    # same batches, timesteps and noise; only the memory format differs: float rounding, not noise
    assert np.allclose(fast, plain, rtol=1e-3, atol=1e-4), (fast, plain)
    assert fast_bpd == pytest.approx(plain_bpd, rel=1e-3)


@pytest.mark.parametrize("prediction_type,snr_gamma", [("epsilon", 5.0), ("v_prediction", 5.0), ("sample", None)])
def test_objectives_train_and_log_a_finite_bound(prediction_type, snr_gamma):
    family = DDPMFamily()
    config = dict(DDPMFamily.presets["tiny"].model, prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    model = family.build_model(config, channels=3, sample_size=16)
    images = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    settings = build_parser(family).parse_args(["--output_dir", "x", "--preset", "tiny"] + (
        ["--snr_gamma", str(snr_gamma)] if snr_gamma else []))
    loss, logs = family.loss(model, images, 0, torch.Generator().manual_seed(1), settings)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"bits_per_dim", "mse"}
    assert torch.isfinite(logs["bits_per_dim"]) and logs["bits_per_dim"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    pipeline = family.make_pipeline(model)
    assert pipeline.scheduler.config.prediction_type == prediction_type
    bound = family.bounds(model.eval(), images, 3, torch.Generator().manual_seed(2)).nats_per_image_elbo
    assert bound.shape == (4,) and torch.isfinite(bound).all()


def test_learned_variance_bound_equals_the_sum_of_its_terms_and_the_variance_is_trained():
    """L_vlb of a learned-variance (learned_range) tiny UNet with every timestep summed equals L_T plus each term
    computed one by one with the same noise; the hybrid loss sends gradient to the variance channels only through
    L_vlb (the mean's gradient is stopped there)."""
    from hfgen.models.ddpm import add_noise, variational_bound

    family = DDPMFamily()
    config = dict(family.presets["tiny"].model, variance_type="learned_range", beta_schedule="squaredcos_cap_v2",
                  num_train_timesteps=12)
    unet = family.build_model(config, 1, 16).eval()
    images = torch.randint(0, 256, (3, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    estimate = variational_bound(unet, family.scheduler, images, 100, torch.Generator().manual_seed(1))
    assert estimate.exact and torch.isfinite(estimate.nats_per_image).all()
    tables = DiffusionTables(family.scheduler, "cpu")
    x0 = images.float() * (2 / 255) - 1
    gen = torch.Generator().manual_seed(1)  # the draws variational_bound makes, in its order: t = 0, 1, ..., T-1
    total = prior_nats(tables, x0)
    with torch.no_grad():
        for step in range(12):
            t = torch.full((3,), step, dtype=torch.long)
            x_t = add_noise(tables, x0, torch.randn(x0.shape, generator=gen), t)
            total = total + vlb_term_nats(tables, x0, x_t, t, unet(x_t, t).sample)
    torch.testing.assert_close(estimate.nats_per_image, total, rtol=1e-5, atol=1e-3)
    # the variance channels get gradient from the hybrid loss; with vlb_weight 0 they get none
    for weight, expect_gradient in ((0.001, True), (0.0, False)):
        unet.zero_grad()
        loss, logs = family.loss(unet, images, 0, torch.Generator().manual_seed(2),
                                 argparse.Namespace(snr_gamma=None, vlb_weight=weight))
        loss.backward()
        variance_rows = unet.conv_out.weight.grad[1]  # output channel 1: v
        assert bool(variance_rows.abs().sum() > 0) == expect_gradient
        assert torch.isfinite(logs["vlb_term_nats_per_dim"])


def test_a_linear_schedule_too_short_for_its_betas_is_refused():
    with pytest.raises(ValueError, match="num_train_timesteps=10 with the linear schedule scales beta_T to 2"):
        build_scheduler({"num_train_timesteps": 10})
    assert build_scheduler({"num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2"}).config.num_train_timesteps == 10


def test_ddim_does_not_inherit_clipping_and_options_override_the_sampler_settings(monkeypatch):
    """DDIM's defaults are hfgen's choice (no clipping, leading spacing), not the folder's DDPM clip_sample=True;
    clip_sample and timestep_spacing can still be set per call."""
    from diffusers import DDIMScheduler, DDPMPipeline

    family = DDPMFamily()
    unet = family.build_model(family.presets["tiny"].model, 1, 16)
    pipeline = family.make_pipeline(unet)
    assert pipeline.scheduler.config.clip_sample  # the folder's own ancestral sampler clips, as Ho et al.'s
    seen = []
    monkeypatch.setattr(DDPMPipeline, "__call__", lambda self, **kw: seen.append(self.scheduler.config) or
                        type("Out", (), {"images": []})())
    family.sample_images(pipeline, 1, torch.Generator(), scheduler="ddim", steps=5)
    family.sample_images(pipeline, 1, torch.Generator(), scheduler="ddim", steps=5, clip_sample=True,
                         timestep_spacing="trailing")
    assert (seen[0].clip_sample, seen[0].timestep_spacing) == (False, "leading")
    assert (seen[1].clip_sample, seen[1].timestep_spacing) == (True, "trailing")
    # DPM-Solver++: clipped (thresholding at 1) on its own "linspace" steps, not the folder's "leading"
    family.sample_images(pipeline, 1, torch.Generator(), scheduler="dpm-solver++", steps=5)
    family.sample_images(pipeline, 1, torch.Generator(), scheduler="dpm-solver++", steps=5, clip_sample=False)
    assert (seen[2].thresholding, seen[2].sample_max_value, seen[2].timestep_spacing) == (True, 1.0, "linspace")
    assert not seen[3].thresholding
    assert isinstance(DDIMScheduler.from_config(seen[0]), DDIMScheduler)


@pytest.mark.parametrize("clip_sample", [True, False])
def test_dpm_solver_clips_its_data_prediction_when_asked(monkeypatch, clip_sample):
    """DPM-Solver++ has no clip_sample; hfgen maps it to dynamic thresholding at 1, which clips every x_0 prediction
    to [-1, 1] as the DDPM and DDIM schedulers' clip_sample does. An untrained network's x_0 predictions at high
    noise lie far outside [-1, 1], so the unclipped run shows them and the clipped one never does."""
    from diffusers import DPMSolverMultistepScheduler

    family = DDPMFamily()
    torch.manual_seed(0)
    pipeline = family.make_pipeline(family.build_model(family.presets["tiny"].model, 1, 16))
    pipeline.set_progress_bar_config(disable=True)
    unclipped_max, predictions = [], []
    original = DPMSolverMultistepScheduler.convert_model_output
    threshold = DPMSolverMultistepScheduler._threshold_sample

    def record_threshold(self, sample):
        unclipped_max.append(sample.abs().max().item())
        return threshold(self, sample)

    def record(self, *args, **kwargs):
        predictions.append(original(self, *args, **kwargs))
        return predictions[-1]

    monkeypatch.setattr(DPMSolverMultistepScheduler, "_threshold_sample", record_threshold)
    monkeypatch.setattr(DPMSolverMultistepScheduler, "convert_model_output", record)
    images = family.sample_images(pipeline, 2, torch.Generator().manual_seed(0), scheduler="dpm-solver++", steps=4,
                                  clip_sample=clip_sample)
    assert len(images) == 2 and len(predictions) == 4
    largest = max(p.abs().max().item() for p in predictions)
    if clip_sample:
        assert len(unclipped_max) == 4 and max(unclipped_max) > 1.5  # there was something to clip
        assert largest == pytest.approx(1.0)
    else:
        assert not unclipped_max and largest > 1.5
