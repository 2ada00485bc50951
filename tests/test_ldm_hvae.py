"""The join of the latent diffusion and the hierarchical VAE (LSGM): a diffusion prior over the prior noise of a
frozen hierarchical VAE's top latent groups, its bound, its pipeline and its folder.

Tiny configs on a CPU. The change of variables is checked against its closed form, a new (zero-output) prior
against the hierarchical VAE's own ELBO, and a two-stage run (hierarchical VAE, then prior) goes end to end:
folder, `hfgen evaluate`, `hfgen sample`, resume after a crash, plain diffusers without hfgen, refusals.
"""

import json
import math
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from hfgen.cli import main as hfgen_main
from hfgen.families import HVAEFamily, LatentDiffusionFamily, load_pipeline
from hfgen.hub import publish_files
from hfgen.models import HierarchicalVAEModel
from hfgen.models.ddpm import build_scheduler
from hfgen.pipelines import LatentDiffusionPipeline
from hfgen.training import build_parser, train

from conftest import PYTHON, requires_fashion_mnist, reset_accelerate_state
from test_hub import BLOCK_HFGEN, _env
from test_ldm import RESUMABLE, assert_resume_after_a_crash_is_exact

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "256", "--eval_max_samples", "32",
        "--final_eval_max_samples", "32", "--report_to", "none"]
# two groups at the top resolution (4x4), one at 8x8
HVAE_GROUPS = ["--groups_per_scale", "0", "0", "1", "2"]


def _hvae(seed=0, num_classes=0):
    """A tiny hierarchical VAE with two groups at its top resolution and weights everywhere (a new one's priors and
    posteriors start at zero)."""
    torch.manual_seed(seed)
    model = HierarchicalVAEModel(block_out_channels=[8, 8, 8, 8], groups_per_scale=[0, 0, 1, 2], latent_channels=2,
                                 decoder_blocks_per_group=0, output_blocks=0, source_size=[28, 28],
                                 num_classes=num_classes, pixel_passes=2, pixel_pass_layers=1)
    for parameter in model.parameters():
        if parameter.abs().sum() == 0:
            torch.nn.init.normal_(parameter, std=0.1)
    return model.eval()


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _joined(num_groups=2, num_classes=0, as_if_trained=True, conditional_first_stage=False):
    family = LatentDiffusionFamily()
    family.set_vae(_hvae(num_classes=num_classes if conditional_first_stage else 0))
    config = dict(family.presets["tiny"].model, diffused_groups=num_groups)
    if num_classes:
        config.update(num_classes=num_classes, class_names=["shirt", "sneaker", "bag"])
    pipeline = family.make_pipeline(family.build_model(config, 1, 32))
    if as_if_trained:
        torch.nn.init.normal_(pipeline.unet.conv_out.weight, std=0.05)
    pipeline.set_progress_bar_config(disable=True)
    return family, pipeline


# ---------------------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("num_groups, channels", [(1, 2), (2, 4), (3, 12)])
def test_prior_noise_is_a_change_of_variables_with_its_log_jacobian(num_groups, channels):
    """u_i = (z_i - mu_p,i) / sigma_p,i group by group: log p(z_top) = log N(u; 0, I) - sum log sigma_p (the
    triangular Jacobian's log-determinant), and the top-down path run from u gives back the same z. With all three
    groups the 8x8 group folds onto the 4x4 grid (space-to-depth, 2 -> 8 channels)."""
    model = _hvae()
    out = model.encode_prior_noise(_images(), num_groups, torch.Generator().manual_seed(0))
    assert out.prior_noise.shape == (6, channels, 4, 4) and out.lower_kl is None  # the diffused groups only
    u = out.prior_noise
    standard_normal = (-0.5 * u.pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    torch.testing.assert_close(out.prior_log_density, standard_normal - out.log_prior_scale, rtol=0, atol=1e-3)
    posterior = model.encode(_images(), generator=torch.Generator().manual_seed(0)).latents
    _, drawn = model.generate_parameters(6, prior_noise=u, temperature=0.0, return_latents=True)
    for i in range(num_groups):
        torch.testing.assert_close(drawn[i], posterior[i], rtol=0, atol=1e-4)


def test_groups_at_several_resolutions_stack_on_the_finest_grid_they_fold_onto_exactly():
    """With 4 latent channels the 4x4 groups unfold onto the 8x8 grid (depth-to-space, 4 -> 1 channel) and the
    16x16 group folds onto it (space-to-depth, 4 -> 16): every unit once, split gives back each group; with 2 latent
    channels a 4x4 group cannot unfold, so the grid is the top one."""
    model = HierarchicalVAEModel(block_out_channels=[4, 4, 4, 4], groups_per_scale=[0, 1, 1, 2], latent_channels=4)
    assert [model.prior_noise_shape(g) for g in (1, 2, 3, 4)] == [(4, 4, 4), (8, 4, 4), (6, 8, 8), (22, 8, 8)]
    groups = [torch.randn(3, *shape) for shape in model.group_shapes()]
    stacked = model.stack_prior_noise(groups)
    assert stacked.shape == (3, 22, 8, 8) and model.prior_noise_groups(stacked.shape[1:]) == 4
    assert torch.equal(stacked.flatten(1).sort(1).values, torch.cat([g.flatten(1) for g in groups], 1).sort(1).values)
    for original, back in zip(groups, model.split_prior_noise(stacked)):
        assert torch.equal(original, back)
    narrow = HierarchicalVAEModel(block_out_channels=[4, 4, 4, 4], groups_per_scale=[0, 1, 1, 2], latent_channels=2)
    assert narrow.prior_noise_shape(4) == (2 + 2 + 8 + 32, 4, 4)  # sample_size 32: groups at 4, 4, 8, 16
    with pytest.raises(ValueError, match=r"no top groups of this hierarchical VAE stack to shape \(5, 8, 8\)"):
        model.split_prior_noise(torch.zeros(1, 5, 8, 8))


def test_own_prior_terms_are_the_hierarchical_vae_elbo():
    """With the same z, reconstruction + lower groups' KL + log q - log p of the top groups is the hierarchical VAE's
    one-sample ELBO (its top groups' KL estimated at the sample instead of in closed form): equal in expectation."""
    model = _hvae()
    images = _images(200)
    out = model.encode_prior_noise(images, 2, torch.Generator().manual_seed(1), bound_terms=True)
    joined = out.reconstruction_nll + out.lower_kl + out.posterior_log_density - out.prior_log_density
    elbo = model.log_likelihood_bounds(images, generator=torch.Generator().manual_seed(2)).nats_per_image_elbo
    difference = joined - elbo
    stderr = difference.std().item() / math.sqrt(len(difference))
    assert abs(difference.mean().item()) < 4 * stderr + 1e-3


@pytest.mark.parametrize("num_groups", [2, 3])
def test_a_new_prior_over_the_top_groups_is_the_hierarchical_vaes_own(num_groups):
    """A zero output layer with v-prediction and beta_t variances is the exact reverse process of N(0, I) data, and
    the hierarchical VAE's own prior makes the prior noise N(0, I): before any training the joined model's bound is
    the hierarchical VAE's ELBO, paired per image with the same z (the gain is 0 up to the timestep sampling); over
    all three groups too, on one grid."""
    family, pipeline = _joined(num_groups=num_groups, as_if_trained=False)
    family.scheduler = build_scheduler(dict(num_train_timesteps=100, prediction_type="v_prediction",
                                            variance_type="fixed_large", clip_sample=False))
    family._tables = {}
    assert pipeline.unet.conv_out.weight.abs().max() == 0
    bounds = family.bounds(pipeline.unet, _images(300), 99, torch.Generator().manual_seed(0))
    gain = bounds.terms["prior_gain"]
    assert abs(gain.mean().item()) < 4 * gain.std().item() / math.sqrt(len(gain)) + 1e-3
    # every part is there and they add up, image by image
    terms = bounds.terms
    torch.testing.assert_close(bounds.nats_per_image_elbo, terms["reconstruction"] + terms["lower_groups_kl"]
                               + terms["posterior_log_density"] + terms["latent_prior"])
    torch.testing.assert_close(terms["prior_gain"], terms["hvae_elbo"] - bounds.nats_per_image_elbo)
    assert sorted(terms) == family.bound_terms(pipeline.unet)


# ---------------------------------------------------------------------------------------------- the pipeline
def _draw(pipeline, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "np", **kwargs}
    return pipeline(generator=torch.Generator().manual_seed(seed), **kwargs)


def test_pipeline_draws_the_top_groups_then_the_rest_at_their_temperature():
    _, pipeline = _joined(num_groups=1)
    assert pipeline.latent_shape == (2, 4, 4) and pipeline.diffused_groups == 1
    out = _draw(pipeline, batch_size=3)
    assert out.images.shape == (3, 28, 28, 1) and out.latents.shape == (3, 2, 4, 4)
    # the same initial noise through a deterministic sampler, and every lower group at temperature 0: the same
    # images, whatever the generator
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    cold = [_draw(pipeline, seed, latents=out.latents, temperature=0.0).images for seed in (1, 2)]
    np.testing.assert_allclose(cold[0], cold[1], atol=1e-6)
    warm = _draw(pipeline, 1, latents=out.latents).images
    assert np.abs(warm - cold[0]).max() > 1e-3  # temperature 1 draws the lower groups
    assert _draw(pipeline, batch_size=2, temperature=[0.5, 0.0]).images.shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match=r"a list of 2 \(one per latent group below the 1 the diffusion draws\)"):
        _draw(pipeline, batch_size=2, temperature=[1.0])
    # generator lists: image i depends on generator[i] alone, pixel draws included
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pair = pipeline(batch_size=2, generator=generators, num_inference_steps=3, output_type="np",
                    sample_pixels=True).images
    alone = pipeline(batch_size=1, generator=[torch.Generator().manual_seed(6)], num_inference_steps=3,
                     output_type="np", sample_pixels=True).images
    np.testing.assert_allclose(pair[1:], alone, atol=1e-5)


def test_class_conditional_prior_with_guidance_and_class_names():
    _, pipeline = _joined(num_classes=3)
    out = _draw(pipeline, class_labels=["sneaker", 2], guidance_scale=2.0)
    assert out.images.shape == (2, 28, 28, 1)
    assert pipeline.get_label_ids(["Bag"]) == [2]
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    assert _draw(pipeline, class_labels=0, batch_size=2, output_type="latent").images.shape == (2, 4, 4, 4)


def test_a_class_conditional_hierarchical_vae_takes_the_class_in_both_stages():
    """The class goes to the prior and to the hierarchical VAE (its lower groups, its decoder, the prior noise it
    defines); without labels both take the null class, which gives -log p(x)."""
    family, pipeline = _joined(num_classes=3, conditional_first_stage=True)
    images = _images(8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    given = family.bounds(pipeline.unet, images, 4, torch.Generator().manual_seed(0), class_labels=labels)
    null = family.bounds(pipeline.unet, images, 4, torch.Generator().manual_seed(0))
    noise_given = pipeline.vae.encode_prior_noise(images, 2, torch.Generator().manual_seed(0), class_labels=labels)
    noise_null = pipeline.vae.encode_prior_noise(images, 2, torch.Generator().manual_seed(0))
    assert not torch.allclose(noise_given.prior_noise, noise_null.prior_noise)
    assert not torch.allclose(given.terms["hvae_elbo"], null.terms["hvae_elbo"])
    # the class reaches the decoder: the same initial noise, other classes, other images
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    first = _draw(pipeline, class_labels=[0, 0], guidance_scale=1.0)
    again = _draw(pipeline, latents=first.latents, class_labels=["sneaker", "bag"], guidance_scale=1.0)
    assert np.abs(first.images - again.images).max() > 1e-3
    assert _draw(pipeline, batch_size=2).images.shape == (2, 28, 28, 1)  # the null class of both


def test_components_that_do_not_fit_are_refused_by_name():
    family, pipeline = _joined(num_groups=2)
    with pytest.raises(ValueError, match=r"this hierarchical VAE has 3 group\(s\), 2 at its top resolution 4x4 "
                                         r".*expected 1 to 3"):
        LatentDiffusionFamily.build_model(family, dict(family.presets["tiny"].model, diffused_groups=4), 1, 32)
    conditional = _hvae(num_classes=3)
    with pytest.raises(ValueError, match=r"the hierarchical VAE is class-conditional with 3 classes, but the UNet has "
                                         r"num_class_embeds=None; expected a class-conditional prior"):
        LatentDiffusionPipeline(vae=conditional, unet=pipeline.unet, scheduler=pipeline.scheduler)
    other = HierarchicalVAEModel(block_out_channels=[8, 8, 8], groups_per_scale=[0, 1, 1], latent_channels=2)
    with pytest.raises(ValueError, match=r"not a prior trained on this hierarchical VAE's top groups: .*G=1: \(2, 8, 8\)"):
        LatentDiffusionPipeline(vae=other, unet=pipeline.unet, scheduler=pipeline.scheduler)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def hvae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joined") / "hvae"
    train(HVAEFamily(), build_parser(HVAEFamily()).parse_args(["--output_dir", str(folder), *TINY, *HVAE_GROUPS,
                                                               "--max_train_steps", "6"]))
    reset_accelerate_state()
    return folder


def _joined_args(hvae_folder, output_dir, *extra):
    return build_parser(LatentDiffusionFamily()).parse_args(
        ["--vae", str(hvae_folder), "--output_dir", str(output_dir), *TINY, *extra])


@pytest.fixture(scope="module")
def joined_folder(hvae_folder):
    folder = hvae_folder.parent / "joined"
    train(LatentDiffusionFamily(), _joined_args(hvae_folder, folder, *RESUMABLE))
    reset_accelerate_state()
    return folder


@requires_fashion_mnist
def test_two_stage_run_writes_a_joined_folder(joined_folder):
    index = json.loads((joined_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ldm", "LatentDiffusionPipeline"]
    assert index["vae"] == ["modeling_hvae", "HierarchicalVAEModel"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert "vae/modeling_hvae.py" in publish_files(joined_folder)
    unet = json.loads((joined_folder / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 4 and unet["sample_size"] == 4  # both top groups by default: 2 x 2 channels, 4x4
    metrics = json.loads((joined_folder / "metrics.json").read_text())
    assert metrics["num_dims"] == 784 and metrics["vlb_timesteps"] == 16
    assert metrics["likelihood"]["first_stage"] == "HierarchicalVAEModel"
    assert metrics["likelihood"]["diffused_groups"] == 2
    terms = metrics["bound_terms"]
    assert set(terms) == set(LatentDiffusionFamily.HIERARCHICAL_BOUND_TERMS)
    assert terms["prior_gain"]["nats_per_image"] == pytest.approx(
        terms["hvae_elbo"]["nats_per_image"] - metrics["nats_per_image_elbo"], rel=1e-6)
    card = (joined_folder / "README.md").read_text()
    assert "HierarchicalVAEModel" in card and "vae/modeling_hvae.py" in card
    assert "hierarchical VAE with its own priors (ELBO)" in card


@requires_fashion_mnist
def test_the_joined_folder_evaluates_and_samples_from_the_command_line(joined_folder, capsys):
    assert hfgen_main(["evaluate", str(joined_folder), "--split", "test", "--max-samples", "16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_samples"] == 16 and result["vlb_timesteps"] == 16 and result["num_dims"] == 784
    assert set(result["bound_terms"]) == set(LatentDiffusionFamily.HIERARCHICAL_BOUND_TERMS)
    assert result["bits_per_dim_elbo"] == pytest.approx(result["nats_per_image_elbo"] / (784 * math.log(2)), rel=1e-6)
    out = joined_folder.parent / "grid.png"
    assert hfgen_main(["sample", str(joined_folder), "--num-images", "4", "--scheduler", "ddim", "--steps", "3",
                       "--temperature", "0.7", "--out", str(out)]) == 0
    assert out.is_file()
    assert hfgen_main(["evaluate", str(joined_folder), "--split", "test", "--max-samples", "50", "--metrics", "fd",
                       "--num-samples", "10", "--scheduler", "ddim", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_generated"] == 10 and result["fd_fmnist"] > 0
    assert result["sampled_images"] == "mean"  # the tiny hierarchical VAE decodes in one pass: the mean of p(x | z)


@requires_fashion_mnist
def test_resume_after_a_crash_is_exact(hvae_folder, joined_folder):
    assert_resume_after_a_crash_is_exact(lambda out, *extra: _joined_args(hvae_folder, out, *extra), joined_folder,
                                         joined_folder.parent / "crashed")


# ---------------------------------------------------------------------------------------------- end-to-end training
def test_the_end_to_end_loss_is_the_bound_and_trains_both_networks():
    """--train_first_stage: the loss (nats per pixel dimension) is an unbiased estimate of the joined bound that
    ``bounds`` computes with every timestep, and its gradient reaches the encoder, the decoder and the UNet."""
    family, pipeline = _joined(num_groups=2)
    family.train_first_stage = True
    family.set_vae(pipeline.vae)
    unet = pipeline.unet
    images = _images(8)
    estimates = []
    for seed in range(200):
        loss, logs = family.end_to_end_loss(unet, images, torch.Generator().manual_seed(seed))
        estimates.append(loss.item())
    estimates = torch.tensor(estimates) * 784
    exact = torch.stack([family.bounds(unet, images, 99, torch.Generator().manual_seed(seed)).nats_per_image_elbo.mean()
                         for seed in range(40)])
    standard_error = (estimates.var() / estimates.numel() + exact.var() / exact.numel()).sqrt()
    assert abs(estimates.mean() - exact.mean()) < 4 * standard_error, (estimates.mean(), exact.mean(), standard_error)
    assert logs["bits_per_dim"] == pytest.approx(loss.item() / math.log(2), rel=1e-5)
    loss.backward()
    vae = pipeline.vae
    for name, parameter in [("encoder", next(vae.bottom_up.parameters())), ("decoder", vae.conv_out.weight),
                            ("UNet", unet.conv_out.weight)]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.fixture(scope="module")
def end_to_end_folder(hvae_folder):
    folder = hvae_folder.parent / "end-to-end"
    train(LatentDiffusionFamily(), _joined_args(hvae_folder, folder, "--train_first_stage", *RESUMABLE))
    reset_accelerate_state()
    return folder


@requires_fashion_mnist
def test_end_to_end_training_writes_the_trained_first_stage_and_a_plain_unet(hvae_folder, end_to_end_folder, capsys):
    frozen = load_file(hvae_folder / "vae" / "diffusion_pytorch_model.safetensors")
    trained = load_file(end_to_end_folder / "vae" / "diffusion_pytorch_model.safetensors")
    assert frozen.keys() == trained.keys()
    assert max((frozen[k] - trained[k]).abs().max().item() for k in frozen) > 1e-4  # the first stage was trained
    unet = load_file(end_to_end_folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any(key.startswith(LatentDiffusionFamily.TRAINED_FIRST_STAGE) for key in unet)
    config = json.loads((end_to_end_folder / "training_config.json").read_text())
    assert config["train_first_stage"] is True
    card = (end_to_end_folder / "README.md").read_text()
    assert "hierarchical VAE trained together with it" in card and "end to end on the bound" in card
    assert "is frozen" not in card
    pipeline = LatentDiffusionPipeline.from_pretrained(end_to_end_folder)
    assert type(pipeline.vae).__name__ == "HierarchicalVAEModel" and pipeline.diffused_groups == 2
    assert hfgen_main(["evaluate", str(end_to_end_folder), "--split", "test", "--max-samples", "16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_dims"] == 784 and math.isfinite(result["bits_per_dim_elbo"])


@requires_fashion_mnist
def test_end_to_end_resume_after_a_crash_is_exact(hvae_folder, end_to_end_folder):
    assert_resume_after_a_crash_is_exact(
        lambda out, *extra: _joined_args(hvae_folder, out, "--train_first_stage", *extra), end_to_end_folder,
        end_to_end_folder.parent / "end-to-end-crashed")


# Launched as 2 CPU processes: trains the join, then (before the folder is written) gathers a checksum of each
# network's weights from every process into the run's folder.
_TWO_PROCESS_LAUNCHER = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    import hfgen.training.loop as loop
    from hfgen.families import LatentDiffusionFamily
    from hfgen.training import build_parser, train

    write_final_folder = loop.write_final_folder

    def checked(run, last_validation):
        unet = [p for n, p in run.unwrapped.named_parameters() if not n.startswith("first_stage.")]
        first_stage = run.family.vae  # frozen, or a submodule of the UNet trained with it
        sums = torch.stack([sum(p.double().sum() for p in unet), sum(p.double().sum() for p in first_stage.parameters())])
        gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, sums)
        if dist.get_rank() == 0:
            (run.output_dir / "weight_sums.json").write_text(json.dumps([g.tolist() for g in gathered]))
        return write_final_folder(run, last_validation)

    loop.write_final_folder = checked
    family = LatentDiffusionFamily()
    train(family, build_parser(family).parse_args(sys.argv[1:]))
""")


@requires_fashion_mnist
@pytest.mark.parametrize("end_to_end", [False, True])
def test_two_process_runs_keep_both_networks_in_step(hvae_folder, tmp_path, run_env, end_to_end):
    """Two CPU processes (gloo) train the joined model, the prior alone or end to end: each sees its own images, and
    the first stage, which runs outside the UNet's forward, must still have its gradients averaged across processes,
    so both networks' weights are the same on every process at the end; the folder is written and loads."""
    launcher, out = tmp_path / "launch.py", tmp_path / "ddp"
    launcher.write_text(_TWO_PROCESS_LAUNCHER)
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(launcher), "--vae", str(hvae_folder),
           "--output_dir", str(out), *TINY, *(["--train_first_stage"] if end_to_end else []), "--max_train_steps", "4"]
    result = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    batch_size = json.loads((out / "training_config.json").read_text())["train_batch_size"]
    assert metrics["num_processes"] == 2 and metrics["images_seen"] == 4 * 2 * batch_size
    rank0, rank1 = json.loads((out / "weight_sums.json").read_text())
    assert rank0 == rank1
    before = load_pipeline(str(hvae_folder))[0].vae
    trained = load_pipeline(str(out))[0].vae
    changed = any(not torch.equal(a, b) for a, b in zip(before.parameters(), trained.parameters()))
    assert changed == end_to_end  # trained with the prior, or frozen


@requires_fashion_mnist
def test_bad_first_stages_are_refused_and_nothing_is_written(hvae_folder, joined_folder, tmp_path):
    family = LatentDiffusionFamily()
    conditional = tmp_path / "conditional-hvae"
    HVAEFamily().make_pipeline(_hvae(num_classes=3)).save_pretrained(conditional)
    cases = [
        ((conditional,), r"is class-conditional \(3 classes\).*expected --class_conditional"),
        ((hvae_folder, "--diffused_groups", "4"), r"this hierarchical VAE has 3 group\(s\), 2 at its top resolution"),
        ((joined_folder,), "holds a LatentDiffusionPipeline"),
        ((hvae_folder, "--sample_size", "64"), "trained on 1x32x32 images; got --sample_size 64"),
    ]
    for i, ((folder, *extra), message) in enumerate(cases):
        out = tmp_path / f"out-{i}"
        with pytest.raises(ValueError, match=message):
            train(family, build_parser(family).parse_args(["--vae", str(folder), "--output_dir", str(out), *TINY,
                                                           *extra]))
        reset_accelerate_state()
        assert not out.exists(), f"{out} was written"


PLAIN_DIFFUSERS = BLOCK_HFGEN + textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    folder, out = json.loads(sys.argv[1])
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    result = pipe(batch_size=2, num_inference_steps=4, temperature=0.8, generator=torch.Generator().manual_seed(0),
                  output_type="np")
    np.save(out, result.images)
    print(json.dumps([type(pipe).__name__, type(pipe.vae).__name__, list(result.images.shape),
                      list(result.latents.shape)]))
""")


@requires_fashion_mnist
def test_plain_diffusers_samples_the_joined_folder_without_hfgen(joined_folder, tmp_path):
    out = tmp_path / "plain.npy"
    result = subprocess.run([PYTHON, "-c", PLAIN_DIFFUSERS, json.dumps([str(joined_folder), str(out)])],
                            env=_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name, vae_name, shape, latent_shape = json.loads(result.stdout.strip().splitlines()[-1])
    assert (name, vae_name) == ("LatentDiffusionPipeline", "HierarchicalVAEModel")
    assert shape == [2, 28, 28, 1] and latent_shape == [2, 4, 4, 4]
    pipeline, _ = load_pipeline(str(joined_folder))
    pipeline.set_progress_bar_config(disable=True)
    from diffusers import DPMSolverMultistepScheduler

    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline(batch_size=2, num_inference_steps=4, temperature=0.8, generator=torch.Generator().manual_seed(0),
                        output_type="np").images
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_guidance_reaches_a_class_conditional_hierarchical_vaes_lower_groups():
    """The joined pipeline's guidance_scale guides the prior and, at the same scale, the lower groups' prior means
    of a class-conditional first stage (HierarchicalVAEModel.generate_parameters(guidance_scale=...))."""
    _, pipeline = _joined(num_groups=1, num_classes=3, conditional_first_stage=True)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    labels = ["sneaker", "bag"]
    noise = _draw(pipeline, class_labels=labels, guidance_scale=3.0, output_type="latent").images
    images = _draw(pipeline, class_labels=labels, guidance_scale=3.0, temperature=0.0, output_type="pt").images
    vae = pipeline.vae
    ids = torch.tensor([1, 2])
    expected = vae.decode_image(vae.generate_parameters(2, temperature=[1.0, 0.0, 0.0], prior_noise=noise,
                                                        class_labels=ids, guidance_scale=3.0))
    torch.testing.assert_close(images, (vae.source_region.crop(expected) / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-4)
    unguided = vae.decode_image(vae.generate_parameters(2, temperature=[1.0, 0.0, 0.0], prior_noise=noise,
                                                        class_labels=ids))
    assert not torch.allclose(expected, unguided)
    # a scale of its own for the first stage: the prior guided at 3, the lower groups at 1
    apart = _draw(pipeline, class_labels=labels, guidance_scale=3.0, first_stage_guidance_scale=1.0, temperature=0.0,
                  output_type="pt").images
    torch.testing.assert_close(apart, (vae.source_region.crop(unguided) / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-4)
    _, unconditional_first_stage = _joined(num_groups=1, num_classes=3)
    with pytest.raises(ValueError, match=r"first_stage_guidance_scale=2.0 guides a class-conditional hierarchical VAE "
                                         r"first stage; this one takes no class"):
        _draw(unconditional_first_stage, class_labels=labels, first_stage_guidance_scale=2.0)
