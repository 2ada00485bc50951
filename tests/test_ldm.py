"""The latent diffusion family: a DDPM prior over a frozen VAE's latents, its bound, pipeline and folder.

Tiny configs on a CPU. The bound's parts are checked against closed forms (an exact denoiser of Gaussian data),
and a two-stage run (VAE, then prior) goes end to end: folder, reload, samples, evaluation, resume, plain diffusers.
"""

import json
import math
import subprocess
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from safetensors.torch import load_file

from hfgen.cli import main as hfgen_main
from hfgen.families import LatentDiffusionFamily, VAEFamily, load_pipeline
from hfgen.hub import publish_files
from hfgen.models import VAEModel
from hfgen.models.ddpm import build_scheduler, continuous_variational_bound
from hfgen.pipelines import LatentDiffusionPipeline
from hfgen.training import build_parser, list_checkpoints, train

from conftest import PYTHON, requires_fashion_mnist, reset_accelerate_state
from test_hub import BLOCK_HFGEN, _env

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "256", "--eval_max_samples", "32",
        "--final_eval_max_samples", "32", "--report_to", "none"]


# ---------------------------------------------------------------------------------------------- the bound
class ExactDenoiser(torch.nn.Module):
    """The optimal epsilon prediction for data x_0 ~ N(0, I): E[eps | x_t] = sqrt(1 - abar_t) x_t."""

    def __init__(self, scheduler):
        super().__init__()
        self.sigma = (1 - scheduler.alphas_cumprod.float()).sqrt()

    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.sigma[t].view(-1, 1, 1, 1) * x)


def _gaussian_setup():
    # fixed_large is the exact reverse variance for N(0, I) data (Var(x_{t-1} | x_t) = beta_t, beta_0 for the
    # decoder), so under the exact denoiser L_vlb's expectation is the data's entropy
    scheduler = build_scheduler(dict(num_train_timesteps=100, beta_schedule="linear", prediction_type="epsilon",
                                     variance_type="fixed_large", clip_sample=False))
    return scheduler, ExactDenoiser(scheduler)


def test_continuous_bound_of_gaussian_data_under_the_exact_denoiser_is_its_entropy():
    scheduler, denoiser = _gaussian_setup()
    x0 = torch.randn(4000, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    estimate = continuous_variational_bound(denoiser, scheduler, x0, 99, torch.Generator().manual_seed(1))
    assert estimate.exact and estimate.timesteps_per_image == 100
    # per image: the bound less the image's own -log N(x; 0, I), whose mean is 0 for the exact model
    excess = (estimate.nats_per_image - 0.5 * (x0.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)) / 8
    stderr = excess.std().item() / math.sqrt(len(excess))
    assert abs(excess.mean().item()) < 4 * stderr + 1e-3, (excess.mean().item(), stderr)
    # a wrong decoder variance costs what it should: fixed_small's variances are below the true reverse ones
    small = build_scheduler({**scheduler.config, "variance_type": "fixed_small"})
    looser = continuous_variational_bound(ExactDenoiser(small), small, x0, 99, torch.Generator().manual_seed(1))
    assert (looser.nats_per_image - estimate.nats_per_image).mean().item() / 8 > 0.1
    # the stratified estimate (16 timesteps) agrees with the exact sum within its standard error
    strata = continuous_variational_bound(denoiser, scheduler, x0, 16, torch.Generator().manual_seed(2))
    difference = (strata.nats_per_image - estimate.nats_per_image) / 8
    assert abs(difference.mean().item()) < 4 * difference.std().item() / math.sqrt(len(difference))


def test_continuous_bound_refuses_a_clipping_scheduler():
    scheduler = build_scheduler(dict(num_train_timesteps=100, clip_sample=True))
    with pytest.raises(ValueError, match="clip_sample=False"):
        continuous_variational_bound(ExactDenoiser(scheduler), scheduler, torch.zeros(2, 1, 2, 2), 4,
                                     torch.Generator())


def test_latent_prior_counts_the_log_jacobian_of_the_scaling():
    """z ~ N(0, (1/s)^2 I): the prior sees s z ~ N(0, I), for which the exact denoiser is optimal; -log p(z) is then
    the entropy of N(0, 1/s^2), d log s nats per image below that of s z."""
    scheduler, denoiser = _gaussian_setup()
    family = LatentDiffusionFamily()
    family.scheduler = scheduler
    scale = 4.0
    z = torch.randn(4000, 2, 2, 2, generator=torch.Generator().manual_seed(0)) / scale
    nats = family.latent_prior_nats(denoiser, z, scale, 99, torch.Generator().manual_seed(1))
    entropy = 0.5 * math.log(2 * math.pi * math.e / scale**2)
    per_dim = nats.mean().item() / 8
    assert abs(per_dim - entropy) < 0.03  # without the Jacobian it would be ln 4 = 1.39 nats higher


# ---------------------------------------------------------------------------------------------- VAE's scaling
def test_latent_scaling_factor_is_one_over_the_std_of_posterior_samples():
    torch.manual_seed(0)
    vae = VAEModel(block_out_channels=[8, 16], latent_channels=4).eval()
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    factor = vae.latent_scaling_factor(images, torch.Generator().manual_seed(3), batch_size=16)
    generator = torch.Generator().manual_seed(3)
    samples = []
    for start in range(0, 40, 16):  # by hand: the same draws, in the same order
        batch = vae.pixel_likelihood.prepare(images[start:start + 16], generator)
        samples.append(vae.encode(batch.model_input).latent_dist.sample(generator=generator))
    assert factor == pytest.approx(1 / torch.cat(samples).double().std().item(), rel=1e-6)
    with pytest.raises(ValueError, match="scaling_factor must be a finite number > 0"):
        VAEModel(scaling_factor=0.0)


# ---------------------------------------------------------------------------------------------- pipeline
def _pipeline(num_classes=3, variance_type="fixed_small", latent_channels=4, as_if_trained=True, pixel_passes=1):
    torch.manual_seed(0)
    vae = VAEModel(block_out_channels=[8, 16], latent_channels=latent_channels, source_size=[28, 28],
                   scaling_factor=1.5, pixel_passes=pixel_passes, pixel_pass_layers=int(pixel_passes > 1)).eval()
    if pixel_passes > 1:  # the pass convolutions start at zero (independent pixels); give them weights
        for conv in (vae.interleaved_passes.context, *vae.interleaved_passes.layers):
            torch.nn.init.normal_(conv.weight, std=0.1)
    family = LatentDiffusionFamily()
    family.set_vae(vae)
    config = dict(family.presets["tiny"].model, variance_type=variance_type)
    if num_classes:
        config.update(num_classes=num_classes, class_names=["shirt", "sneaker", "bag"])
    pipeline = family.make_pipeline(family.build_model(config, 1, 32))
    if as_if_trained:  # a new prior's output layer is zero (every class alike); give it weights as training would
        torch.nn.init.normal_(pipeline.unet.conv_out.weight, std=0.05)
    pipeline.set_progress_bar_config(disable=True)
    return family, pipeline


@pytest.fixture(scope="module")
def conditional():
    return _pipeline()


def _draw(pipeline, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 4, "output_type": "np", **kwargs}
    return pipeline(generator=torch.Generator().manual_seed(seed), **kwargs)


def test_a_new_v_prediction_prior_is_the_standard_normal_prior():
    """The output convolution starts at zero, and a zero v-prediction is the exact denoiser of N(0, I) data: before
    any training the diffusion prior is (up to the estimate's noise) N(0, I) over the scaled latents s z, i.e.
    N(0, s^-2 I) over z: the VAE's own N(0, I) prior at s = 1 only."""
    family, pipeline = _pipeline(num_classes=0, as_if_trained=False)
    family.scheduler = build_scheduler(dict(num_train_timesteps=100, prediction_type="v_prediction",
                                            variance_type="fixed_large", clip_sample=False))
    family._tables = {}
    assert pipeline.unet.conv_out.weight.abs().max() == 0
    z = torch.randn(500, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    nats = family.latent_prior_nats(pipeline.unet, z, 1.0, 99, torch.Generator().manual_seed(1))
    excess = (nats - 0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)) / z[0].numel()
    assert abs(excess.mean().item()) < 4 * excess.std().item() / math.sqrt(len(excess)) + 1e-3
    # at s = 0.8 the new prior is N(0, s^-2 I) over z (-log density 0.5 (s z)^2 + 0.5 log 2 pi - log s per
    # dimension), not N(0, I): on latents of spread 1 / s it is better than N(0, I) by 0.5 / s^2 - 0.5 + log s
    s = 0.8
    wide = z / s
    nats = family.latent_prior_nats(pipeline.unet, wide, s, 99, torch.Generator().manual_seed(1))
    dims = z[0].numel()
    scaled_normal = 0.5 * ((s * wide).pow(2) + math.log(2 * math.pi)).flatten(1).sum(1) - dims * math.log(s)
    excess = (nats - scaled_normal) / dims
    assert abs(excess.mean().item()) < 4 * excess.std().item() / math.sqrt(len(excess)) + 1e-3
    standard_normal = 0.5 * (wide.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
    gain = (standard_normal - nats).mean().item() / dims
    assert gain == pytest.approx(0.5 / s**2 - 0.5 + math.log(s), abs=0.01)  # 0.058 nats per dimension


def test_unet_sits_on_the_vae_latent(conditional):
    family, pipeline = conditional
    assert (pipeline.unet.config.in_channels, pipeline.unet.config.sample_size) == (4, 16) == (
        pipeline.latent_shape[0], pipeline.latent_shape[1])
    assert pipeline.unet.config.num_class_embeds == 4 and not pipeline.scheduler.config.clip_sample
    assert family.num_dims(pipeline.unet) == 784  # the VAE's source pixels


def test_latents_in_and_out_reproduce_images_and_decode_like_diffusers(conditional):
    _, pipeline = conditional
    folder_scheduler = pipeline.scheduler
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    try:
        first = _draw(pipeline, class_labels=["bag", 0])
        again = pipeline(latents=first.latents, class_labels=["bag", 0], num_inference_steps=4, output_type="np")
        np.testing.assert_allclose(again.images, first.images, atol=1e-6)
        # images at the data's own 28x28 (the VAE's source_size inside its 32x32 square)
        assert first.latents.shape == (2, 4, 16, 16) and first.images.shape == (2, 28, 28, 1)
        latent = _draw(pipeline, class_labels=["bag", 0], output_type="latent").images
        decoded = pipeline.vae.decode(latent / pipeline.vae.config.scaling_factor).sample[:, :, 2:30, 2:30]
        np.testing.assert_allclose((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), first.images,
                                   atol=1e-6)
        by_index = _draw(pipeline, class_labels=[2, 0]).images
        np.testing.assert_allclose(by_index, first.images, atol=0)
        with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 16, 16\)"):
            pipeline(latents=torch.zeros(2, 4, 8, 8), class_labels=["bag", 0], num_inference_steps=2)
    finally:
        pipeline.scheduler = folder_scheduler


def test_guidance_scale_zero_is_the_null_class_and_generators_are_per_image(conditional):
    _, pipeline = conditional
    null = _draw(pipeline, batch_size=2).images
    np.testing.assert_allclose(_draw(pipeline, class_labels=["bag", 0], guidance_scale=0.0).images, null, atol=0)
    guided = _draw(pipeline, class_labels=["bag", 0], guidance_scale=3.0).images
    assert np.abs(guided - null).max() > 0
    pair = pipeline(class_labels=["bag", "shirt"], num_inference_steps=3, output_type="np",
                    generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]).images
    alone = pipeline(class_labels=["shirt"], num_inference_steps=3, output_type="np",
                     generator=[torch.Generator().manual_seed(6)]).images
    np.testing.assert_allclose(pair[1:], alone, atol=1e-5)
    with pytest.raises(ValueError, match="not one of this model's classes"):
        pipeline(class_labels="hat", num_inference_steps=2)


def test_swapped_samplers_and_learned_variances():
    family, pipeline = _pipeline(variance_type="learned_range")
    assert pipeline.unet.config.out_channels == 8
    for name in ("ddpm", "ddim", "dpm-solver++"):
        images = family.sample_images(pipeline, 2, torch.Generator().manual_seed(0), class_labels="bag",
                                      scheduler=name, steps=3, guidance_scale=2.0)
        assert len(images) == 2 and images[0].size == (28, 28)  # the VAE's source_size
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    with pytest.raises(ValueError, match="variance_type=None"):
        pipeline(num_inference_steps=2)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, variance_type=None)
    assert pipeline(num_inference_steps=2, output_type="np").images.shape == (1, 28, 28, 1)


def test_components_that_do_not_fit_are_refused_by_name():
    family, pipeline = _pipeline(num_classes=0)
    vae, unet, scheduler = pipeline.vae, pipeline.unet, pipeline.scheduler
    with pytest.raises(ValueError, match=r"UNet takes inputs of shape \(3, 16, 16\).*latent has shape \(4, 16, 16\)"):
        LatentDiffusionPipeline(vae=vae, unet=UNet2DModel(**{**unet.config, "in_channels": 3}), scheduler=scheduler)
    vector = VAEModel(block_out_channels=[8, 16], latent_channels=4, latent_dim=8, scaling_factor=1.0)
    with pytest.raises(ValueError, match="vector latent .*latent_dim=8.*spatial latent"):
        LatentDiffusionPipeline(vae=vector, unet=unet, scheduler=scheduler)
    unscaled = VAEModel(block_out_channels=[8, 16], latent_channels=4)
    with pytest.raises(ValueError, match="no scaling_factor"):
        LatentDiffusionPipeline(vae=unscaled, unet=unet, scheduler=scheduler)
    with pytest.raises(ValueError, match="trained without class labels; classifier-free guidance"):
        family.sample_images(pipeline, 1, torch.Generator(), guidance_scale=2.0)


def test_bounds_hold_the_vae_elbo_and_the_gain_paired_image_by_image(conditional):
    family, pipeline = conditional
    family.model_of(pipeline)
    images = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:, :, :2] = 0
    bounds = family.bounds(pipeline.unet, images, 4, torch.Generator().manual_seed(0),
                           class_labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    terms = bounds.terms
    assert sorted(terms) == family.bound_terms(pipeline.unet)
    torch.testing.assert_close(bounds.nats_per_image_elbo, terms["reconstruction"] + terms["posterior_log_density"]
                               + terms["latent_prior"])
    torch.testing.assert_close(terms["prior_gain"], terms["vae_standard_normal_prior_elbo"] - bounds.nats_per_image_elbo)
    # the VAE's own ELBO with the same one posterior sample is what VAEModel's bound computes
    vae_own = pipeline.vae.log_likelihood_bounds(images, importance_samples=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["vae_standard_normal_prior_elbo"], vae_own.nats_per_image_elbo)


def test_a_vae_that_decodes_in_pixel_passes_is_a_first_stage_with_its_exact_decoder_term():
    """A first stage whose p(x | z) sees earlier passes' pixels: the bound's reconstruction term is the VAE's own
    interleaved likelihood (its N(0, I) ELBO is what VAEModel computes), and samples decode pass by pass."""
    family, pipeline = _pipeline(num_classes=0, pixel_passes=4)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    images[:, :, :2] = 0
    bounds = family.bounds(pipeline.unet, images, 2, torch.Generator().manual_seed(0))
    vae_own = pipeline.vae.log_likelihood_bounds(images, importance_samples=1,
                                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bounds.terms["vae_standard_normal_prior_elbo"], vae_own.nats_per_image_elbo)
    latent = _draw(pipeline, batch_size=2, output_type="latent").images
    decoded = pipeline.vae.decode(latent / pipeline.vae.config.scaling_factor).sample
    np.testing.assert_allclose((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                               _draw(pipeline, batch_size=2, crop_to_source=False).images, atol=1e-6)


# ---------------------------------------------------------------------------------------------- two-stage run
@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ldm") / "vae"
    train(VAEFamily(), build_parser(VAEFamily()).parse_args(["--output_dir", str(folder), *TINY,
                                                             "--max_train_steps", "6"]))
    reset_accelerate_state()
    return folder


#: a run of 8 steps with a checkpoint every 4: long enough to crash and resume
RESUMABLE = ("--max_train_steps", "8", "--checkpointing_steps", "4", "--checkpoints_total_limit", "3")


def _ldm_args(vae_folder, output_dir, *extra):
    return build_parser(LatentDiffusionFamily()).parse_args(
        ["--vae", str(vae_folder), "--output_dir", str(output_dir), *TINY, "--class_conditional", *extra])


@pytest.fixture(scope="module")
def ldm_folder(vae_folder):
    folder = vae_folder.parent / "ldm"
    train(LatentDiffusionFamily(), _ldm_args(vae_folder, folder, *RESUMABLE))
    reset_accelerate_state()
    return folder


@requires_fashion_mnist
def test_vae_training_stores_the_scaling_factor(vae_folder):
    config = json.loads((vae_folder / "vae" / "config.json").read_text())
    metrics = json.loads((vae_folder / "metrics.json").read_text())
    assert config["scaling_factor"] == metrics["latent_scaling_factor"] > 0
    assert metrics["latent_scaling_factor_images"] == 256  # --max_train_samples
    assert VAEModel.from_pretrained(vae_folder / "vae").config.scaling_factor == config["scaling_factor"]


@requires_fashion_mnist
def test_two_stage_run_writes_a_latent_diffusion_folder(ldm_folder):
    index = json.loads((ldm_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ldm", "LatentDiffusionPipeline"]
    assert index["vae"] == ["modeling_vae", "VAEModel"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert len(index["class_names"]) == 10
    assert "vae/modeling_vae.py" in publish_files(ldm_folder) and "pipeline_ldm.py" in publish_files(ldm_folder)
    published = (ldm_folder / "pipeline_ldm.py").read_text()
    assert "from ." not in published and "def guided_output" in published  # joined into one file
    metrics = json.loads((ldm_folder / "metrics.json").read_text())
    assert metrics["family"] == "ldm" and metrics["num_dims"] == 784 and metrics["vlb_timesteps"] == 16  # default
    assert "16 stratified timesteps per image" in metrics["estimator"]
    assert metrics["bound_over"] == "source image" and "bits_per_dim_iw" not in metrics
    # a class-conditional prior: -log p(x) (null class) under the plain keys, -log p(x | y) under *_given_label
    assert metrics["likelihood"]["given"] == "nothing (null class)" and "unconditional" not in metrics
    for suffix in ("", "_given_label"):
        terms = metrics[f"bound_terms{suffix}"]
        assert terms["prior_gain"]["nats_per_image"] == pytest.approx(
            terms["vae_standard_normal_prior_elbo"]["nats_per_image"] - metrics[f"nats_per_image_elbo{suffix}"],
            rel=1e-6)
    config = json.loads((ldm_folder / "training_config.json").read_text())
    # the folder's name, not this machine's path; no Hub repo to link as base_model
    assert config["vae"] == "vae (local folder)" and config.get("vae_repo_id") is None
    card = (ldm_folder / "README.md").read_text()
    assert "LatentDiffusionPipeline" in card and "N(0, I) prior" in card


@requires_fashion_mnist
def test_the_folder_reloads_samples_and_evaluates(ldm_folder, capsys):
    pipeline, family = load_pipeline(str(ldm_folder))
    assert type(pipeline) is LatentDiffusionPipeline and isinstance(family, LatentDiffusionFamily)
    assert family.class_names(pipeline)[7] == "Sneaker"
    pipeline.set_progress_bar_config(disable=True)
    images = family.sample_images(pipeline, 2, torch.Generator().manual_seed(0), class_labels="Sneaker",
                                  scheduler="dpm-solver++", steps=4, guidance_scale=2.0)
    assert [image.size for image in images] == [(28, 28)] * 2  # Fashion-MNIST's own size
    assert hfgen_main(["evaluate", str(ldm_folder), "--split", "test", "--max-samples", "16", "--vlb-timesteps",
                       "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_samples"] == 16 and result["vlb_timesteps"] == 4 and result["family"] == "ldm"
    assert set(result["bound_terms"]) == set(result["bound_terms_given_label"]) == set(family.BOUND_TERMS)
    assert result["likelihood"]["given"] == "nothing (null class)"
    assert hfgen_main(["evaluate", str(ldm_folder), "--split", "test", "--max-samples", "100", "--metrics", "fd",
                       "--num-samples", "20", "--class-balanced", "--scheduler", "ddim", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_generated"] == 20 and result["fd_fmnist"] > 0
    assert result["sampling"]["classes"].startswith("balanced")
    out = ldm_folder.parent / "grid.png"
    assert hfgen_main(["sample", str(ldm_folder), "--num-images", "10", "--scheduler", "ddim", "--steps", "3",
                       "--out", str(out)]) == 0
    assert out.is_file()


def assert_resume_after_a_crash_is_exact(args, finished, crashed) -> None:
    """A latent diffusion run with ``args(output_dir, *extra)`` and ``RESUMABLE`` that crashes at step 6 and resumes
    from its step-4 checkpoint in ``crashed`` ends with the weights of the uninterrupted run in ``finished`` (the
    UNet's, and the first stage's: frozen, or trained with ``--train_first_stage``)."""
    class Crashing(LatentDiffusionFamily):
        def loss(self, model, images, step, generator, config, class_labels=None):
            if step == 6:
                raise RuntimeError("simulated crash")
            return super().loss(model, images, step, generator, config, class_labels)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(Crashing(), args(crashed, *RESUMABLE))
    reset_accelerate_state()
    assert [p.name for p in list_checkpoints(crashed)] == ["checkpoint-4"]
    train(LatentDiffusionFamily(), args(crashed, *RESUMABLE, "--resume_from_checkpoint", "latest"))
    reset_accelerate_state()
    for weights in sorted(finished.glob("*/*.safetensors")):  # the UNet; a first stage trained with it too
        a, b = load_file(weights), load_file(crashed / weights.relative_to(finished))
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, weights.relative_to(finished)


@requires_fashion_mnist
def test_resume_after_a_crash_is_exact(vae_folder, ldm_folder):
    assert_resume_after_a_crash_is_exact(lambda out, *extra: _ldm_args(vae_folder, out, *extra), ldm_folder,
                                         ldm_folder.parent / "crashed")


@requires_fashion_mnist
def test_end_to_end_training_of_a_vae_first_stage_is_refused(vae_folder, tmp_path):
    family = LatentDiffusionFamily()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--train_first_stage trains a hierarchical VAE first stage with its prior; "
                                         r".* is a VAE with one latent"):
        train(family, build_parser(family).parse_args(["--vae", str(vae_folder), "--output_dir", str(out), *TINY,
                                                       "--train_first_stage"]))
    reset_accelerate_state()
    assert not out.exists()


@requires_fashion_mnist
def test_bad_first_stages_are_refused_and_nothing_is_written(vae_folder, tmp_path):
    family = LatentDiffusionFamily()
    vector = tmp_path / "vector-vae"
    VAEFamily().make_pipeline(VAEModel(block_out_channels=[8, 16], latent_dim=8, scaling_factor=1.0)).save_pretrained(
        vector)
    unscaled = tmp_path / "unscaled-vae"
    VAEFamily().make_pipeline(VAEModel(block_out_channels=[8, 16], latent_channels=4)).save_pretrained(unscaled)
    cases = [(vector, "vector latent"), (unscaled, "no scaling_factor in vae/config.json"),
             (tmp_path / "missing", "is not a folder"), (vae_folder.parent / "ldm", "holds a LatentDiffusionPipeline")]
    for folder, message in cases:
        out = tmp_path / f"out-{folder.name}"
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            train(family, build_parser(family).parse_args(["--vae", str(folder), "--output_dir", str(out), *TINY]))
        reset_accelerate_state()
        assert not out.exists(), f"{out} was written"
    with pytest.raises(ValueError, match="--vae is required"):
        train(family, build_parser(family).parse_args(["--output_dir", str(tmp_path / "none"), *TINY]))
    with pytest.raises(ValueError, match="trained on 1x32x32 images; got --sample_size 64"):
        train(family, build_parser(family).parse_args(["--vae", str(vae_folder), "--output_dir",
                                                       str(tmp_path / "big"), *TINY, "--sample_size", "64"]))
    assert not (tmp_path / "none").exists() and not (tmp_path / "big").exists()


PLAIN_DIFFUSERS = BLOCK_HFGEN + textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    folder, out = json.loads(sys.argv[1])
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    result = pipe(class_labels=["Sneaker", 0], guidance_scale=2.0, num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0), output_type="np")
    np.save(out, result.images)
    print(json.dumps([type(pipe).__name__, type(pipe.vae).__name__, type(pipe.unet).__module__,
                      list(result.images.shape), list(result.latents.shape)]))
""")


@requires_fashion_mnist
def test_plain_diffusers_loads_the_folder_with_trust_remote_code_and_samples_two_images(ldm_folder, tmp_path):
    out = tmp_path / "plain.npy"
    result = subprocess.run([PYTHON, "-c", PLAIN_DIFFUSERS, json.dumps([str(ldm_folder), str(out)])],
                            env=_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name, vae_name, unet_module, shape, latent_shape = json.loads(result.stdout.strip().splitlines()[-1])
    assert (name, vae_name) == ("LatentDiffusionPipeline", "VAEModel") and unet_module.startswith("diffusers.")
    assert shape == [2, 28, 28, 1] and latent_shape == [2, 4, 16, 16]  # the published file crops as hfgen does
    pipeline, _ = load_pipeline(str(ldm_folder))
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline(class_labels=["Sneaker", 0], guidance_scale=2.0, num_inference_steps=4,
                        generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_hfgen_train_help_lists_the_families(capsys):
    assert hfgen_main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("vae", "hvae", "ddpm", "ldm"):
        assert f"\n  {name} " in text
    assert "hfgen train FAMILY --help" in text
    assert hfgen_main(["train", "nope"]) == 2
    assert "expected a family, one of vae, hvae, ddpm, ldm, got 'nope'" in capsys.readouterr().err
