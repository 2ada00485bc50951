"""HierarchicalVAEModel, HierarchicalVAEPipeline and the HVAE family on tiny configs (CPU)."""

import json
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from hfgen import HierarchicalVAEModel, HierarchicalVAEPipeline, VAEModel
from hfgen.cli import main as cli_main
from hfgen.families import load_pipeline
from hfgen.families import HVAEFamily, family_for_pipeline_class
from hfgen.families.hvae import kl_objective
from hfgen.training import TrainingState, build_parser, train
from hfgen.training.loop import MAX_CONSECUTIVE_SPIKE_SKIPS, grad_norm_spike

from conftest import PYTHON, ROOT, requires_fashion_mnist

TINY = dict(block_out_channels=[8, 8, 8], groups_per_scale=[1, 1, 2], latent_channels=2, decoder_blocks_per_group=1,
            output_blocks=0)


def _images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _model(posterior="residual", seed=0, **overrides):
    """A tiny model with its zero-initialised layers perturbed, so that priors, posteriors and KLs are non-trivial."""
    torch.manual_seed(seed)
    model = HierarchicalVAEModel(sample_size=16, posterior=posterior, **{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("posterior", ["residual", "product"])
def test_forward_parts_add_up_and_kl_is_the_sum_over_groups(posterior):
    model = _model(posterior)
    assert model.num_groups == 4 and model.group_shapes()[0] == (2, 4, 4) and model.group_shapes()[-1] == (2, 16, 16)
    out = model(_images(), generator=_gen(), kl_weight=0.5)
    assert out.kl_per_group.shape == (6, 4)
    assert (out.kl_per_group > 0).all()
    assert torch.allclose(out.kl, out.kl_per_group.sum(1))
    assert torch.allclose(out.elbo, -(out.reconstruction_nll + out.kl))
    d = 16 * 16
    assert torch.allclose(out.loss, ((out.reconstruction_nll + 0.5 * out.kl) / d).mean())
    assert torch.allclose(out.bits_per_dim, -out.elbo / (d * np.log(2)))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # float input in [-1, 1] and uint8 agree
    x = _images()
    assert torch.allclose(model(x, generator=_gen()).elbo, model(x.float() / 127.5 - 1, generator=_gen()).elbo)


def test_active_units_count_only_units_whose_posterior_differs_from_the_prior():
    """A group whose residual posterior equals its prior has no active units, although its posterior mean still
    varies with the image through the upper latents (the case Cov_x(E_q[z]) would count as active)."""
    model = _model("residual")
    collapsed = model.groups[2]  # the 8x8 group, below the two 4x4 groups
    with torch.no_grad():
        collapsed.posterior[2].weight.zero_()
        collapsed.posterior[2].bias.zero_()
    stats = model.posterior_statistics(_images(n=12), generator=_gen())
    assert stats["units_per_group"] == [2 * 4 * 4, 2 * 4 * 4, 2 * 8 * 8, 2 * 16 * 16]
    assert stats["kl_per_group"][2] == pytest.approx(0.0, abs=1e-6)
    assert stats["active_units_per_group"][2] == 0
    assert all(stats["active_units_per_group"][i] > 0 for i in (0, 1, 3))
    assert stats["kl_per_group"] == pytest.approx(
        model(_images(n=12), generator=_gen()).kl_per_group.mean(0).tolist(), rel=0.5)


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="posterior must be one of"):
        HierarchicalVAEModel(posterior="mixture")
    with pytest.raises(ValueError, match="groups_per_scale must be"):
        HierarchicalVAEModel(block_out_channels=[8, 8], groups_per_scale=[1, 1, 1])
    with pytest.raises(ValueError, match="lowest scale needs at least one"):
        HierarchicalVAEModel(block_out_channels=[8, 8], groups_per_scale=[1, 0])
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16\)"):
        _model()(_images(2, size=8))


@pytest.mark.parametrize("posterior", ["residual", "product"])
def test_importance_weighted_bound_is_below_the_elbo(posterior):
    model = _model(posterior)
    x = _images(4)
    draws = 64
    k1 = model.log_likelihood_bounds(x.repeat(draws, 1, 1, 1), importance_samples=1, generator=_gen(1))
    assert torch.equal(k1.nats_per_image_iw, k1.nats_per_image_elbo)
    elbo = k1.nats_per_image_elbo.view(draws, 4).mean(0)
    # the Monte Carlo ELBO of the bounds matches forward()'s analytic-KL ELBO in expectation
    with torch.no_grad():
        fwd = -model(x.repeat(draws, 1, 1, 1), generator=_gen(2)).elbo.view(draws, 4).mean(0)
    assert torch.allclose(elbo, fwd, rtol=0.01)
    k64 = model.log_likelihood_bounds(x, importance_samples=64, generator=_gen(3), max_decode_batch=100)
    assert (k64.nats_per_image_iw <= k64.nats_per_image_elbo + 1e-3).all()
    assert k64.nats_per_image_iw.mean() < elbo.mean()


def test_sampling_temperature_and_top_latent():
    pipe = HierarchicalVAEPipeline(vae=_model())
    pipe.set_progress_bar_config(disable=True)
    pil = pipe(batch_size=3, generator=_gen()).images
    assert len(pil) == 3 and pil[0].size == (16, 16) and pil[0].mode == "L"
    assert pipe(batch_size=2, generator=_gen(), output_type="np").images.shape == (2, 16, 16, 1)
    pt = pipe(batch_size=2, generator=_gen(), output_type="pt", return_dict=False)[0]
    assert pt.shape == (2, 1, 16, 16)
    same = [pipe(batch_size=2, generator=_gen(5), output_type="pt").images for _ in range(2)]
    assert torch.equal(*same)
    # temperature 0 below the top: the images are a function of the top latent alone
    z1 = torch.randn(2, *pipe.vae.group_shapes()[0], generator=_gen(9))
    a, b = (pipe(batch_size=2, generator=_gen(seed), latents=z1, temperature=[1.0, 0.0, 0.0, 0.0],
                 output_type="pt").images for seed in (1, 2))
    assert torch.equal(a, b)
    c = pipe(batch_size=2, generator=_gen(1), latents=z1, temperature=1.0, output_type="pt").images
    assert not torch.equal(a, c)
    # temperature 0 everywhere: the prior means, whatever the seed
    assert torch.equal(pipe(batch_size=2, generator=_gen(1), temperature=0, output_type="pt").images,
                       pipe(batch_size=2, generator=_gen(2), temperature=0, output_type="pt").images)
    with pytest.raises(ValueError, match="one per group"):
        pipe(temperature=[1.0, 1.0])
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(batch_size=2, latents=torch.zeros(2, 2, 8, 8))


def test_save_load_round_trip_and_pipeline_folder(tmp_path):
    model = _model("product", use_squeeze_excitation=True)
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["block_out_channels"] == [8, 8, 8] and config["posterior"] == "product"
    loaded = HierarchicalVAEModel.from_pretrained(tmp_path / "model")
    x = _images()
    # the same weights: the same ELBO up to float32 rounding (oneDNN may pick another kernel for reloaded weights)
    torch.testing.assert_close(model(x, generator=_gen()).elbo, loaded(x, generator=_gen()).elbo, rtol=1e-5, atol=0)

    # another class's weights are refused, naming the class the config describes and the one asked for
    with pytest.raises(ValueError, match="^the config describes a HierarchicalVAEModel, not a VAEModel") as err:
        VAEModel.from_pretrained(tmp_path / "model")
    assert "\n" not in str(err.value)

    pipe = HierarchicalVAEPipeline(vae=model)
    pipe.save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="describes a HierarchicalVAEModel, not a VAEModel"):
        VAEModel.from_pretrained(tmp_path / "pipe", subfolder="vae")
    folder_pipe, family = load_pipeline(str(tmp_path / "pipe"))
    assert isinstance(folder_pipe, HierarchicalVAEPipeline) and isinstance(family, HVAEFamily)
    assert isinstance(family_for_pipeline_class("HierarchicalVAEPipeline"), HVAEFamily)
    for p in (pipe, folder_pipe):
        p.set_progress_bar_config(disable=True)
    # the same weights and noise; the loaded copy may pick other convolution kernels (memory format, thread count),
    # so equal to float32 rounding, not bit for bit
    torch.testing.assert_close(pipe(batch_size=2, generator=_gen(), output_type="pt").images,
                               folder_pipe(batch_size=2, generator=_gen(), output_type="pt").images,
                               rtol=0, atol=1e-5)
    # reconstruction accepts PIL images and uint8 tensors alike
    x = _images(2)
    pil = [PIL.Image.fromarray(im[0].numpy(), mode="L") for im in x]
    assert torch.allclose(folder_pipe.reconstruct(pil, output_type="pt"),
                          folder_pipe.reconstruct(x, output_type="pt"), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _model().train()
    x = _images()
    model(x, generator=_gen()).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, generator=_gen()).loss.backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_kl_objective_balancing_and_free_bits():
    kl = torch.tensor([[1.0, 3.0], [3.0, 5.0]], requires_grad=True)  # group means 2 and 4
    assert kl_objective(kl, 1.0, balancing=True, free_nats=0.0).item() == pytest.approx(6.0)  # off after warm-up
    balanced = kl_objective(kl, 0.5, balancing=True, free_nats=0.0)
    share = torch.tensor([2.01, 4.01])
    assert balanced.item() == pytest.approx(0.5 * float((share * 2 / share.sum() * torch.tensor([2.0, 4.0])).sum()))
    floored = kl_objective(kl, 1.0, balancing=False, free_nats=3.0)
    assert floored.item() == pytest.approx(3.0 + 4.0)
    floored.backward()
    assert torch.equal(kl.grad[:, 0], torch.zeros(2))  # the group under its free bits gets no KL gradient


def test_grad_norm_spike_skipping_adapts_and_never_stalls():
    state = TrainingState()
    assert not any(grad_norm_spike(state, 1.0, 10.0, 5) for _ in range(20))
    assert grad_norm_spike(state, 1e6, 10.0, 5)
    assert not grad_norm_spike(state, 1.0, 10.0, 5)
    # a lasting 1000x rise: a few skips in a row at most, then the threshold has caught up
    skips = [grad_norm_spike(state, 1000.0, 10.0, 5) for _ in range(200)]
    runs = "".join("s" if skip else "." for skip in skips).split(".")
    assert 1 <= max(len(run) for run in runs) <= MAX_CONSECUTIVE_SPIKE_SKIPS and not any(skips[-100:])
    off = TrainingState()
    assert not any(grad_norm_spike(off, v, 0.0, 0) for v in (1.0, 1e9, 1.0))
    assert off.grad_norm_count == 3


@pytest.mark.parametrize("posterior", ["residual", "product"])
def test_both_posterior_forms_train_with_every_stabiliser(posterior):
    family = HVAEFamily()
    model = family.build_model({**TINY, "posterior": posterior}, 1, 16).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    parser = build_parser(family)
    cfg = parser.parse_args(["--output_dir", "unused", "--kl_warmup_steps", "4", "--kl_balancing",
                             "--free_nats_per_group", "0.5", "--spectral_reg_coeff", "1e-3"])
    x = _images(16)
    losses = []
    for step in range(5):
        loss, logs = family.loss(model, x, step, _gen(step), cfg)
        assert torch.isfinite(loss) and "kl_group_03" in logs and "spectral_penalty" in logs
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    stats = model.eval().posterior_statistics(x, generator=_gen())
    assert len(stats["kl_per_group"]) == 4 and stats["units_per_group"] == [32, 32, 128, 512]


# ---------------------------------------------------------------------------- training runs (Fashion-MNIST)
TINY_ARGS = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "256",
             "--final_eval_max_samples", "32", "--report_to", "none"]


class _Exploding(HVAEFamily):
    """Multiplies the loss by 1e8 on one step (a gradient spike as a real run meets it) and records parameters."""

    def __init__(self, at_step):
        self.at_step, self.snapshots = at_step, {}

    def loss(self, model, images, step, generator, config):
        loss, logs = super().loss(model, images, step, generator, config)
        if step in (self.at_step, self.at_step + 1):
            self.snapshots[step] = [p.detach().clone() for p in model.parameters()]
        return (loss * 1e8 if step == self.at_step else loss), logs


@requires_fashion_mnist
def test_exploding_gradient_is_skipped_and_training_carries_on(tmp_path):
    family = _Exploding(at_step=10)
    args = build_parser(family).parse_args(["--output_dir", str(tmp_path / "run"), *TINY_ARGS,
                                            "--max_train_steps", "14", "--skip_grad_norm_factor", "10",
                                            "--skip_grad_norm_warmup", "5", "--max_grad_norm", "1e12"])
    metrics = train(family, args)
    assert metrics["skipped_steps"] == 1 and metrics["train_steps"] == 14
    for before, after in zip(family.snapshots[10], family.snapshots[11]):
        assert torch.equal(before, after)  # the spike's update was never applied
    weights = load_file(tmp_path / "run" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert np.isfinite(metrics["bits_per_dim_elbo"]) and metrics["grad_norm_mean"] > 0


@requires_fashion_mnist
def test_train_script_tiny_folder_metrics_and_cli(tmp_path, run_env, capsys):
    out = tmp_path / "hvae"
    cmd = [PYTHON, "training/train_hvae.py", "--output_dir", str(out), *TINY_ARGS, "--max_train_steps", "6",
           "--eval_steps", "3"]
    result = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in ("model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "samples.png",
                 "metrics.json", "README.md"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    groups = HierarchicalVAEModel.from_pretrained(out / "vae").num_groups
    assert metrics["family"] == "hvae" and groups == 4
    assert len(metrics["kl_per_group"]) == groups and len(metrics["active_units_per_group"]) == groups
    assert all(0 <= a <= u for a, u in zip(metrics["active_units_per_group"], metrics["units_per_group"]))
    assert metrics["skipped_steps"] == 0 and metrics["bits_per_dim_iw"] <= metrics["bits_per_dim_elbo"] + 1e-6
    assert "hierarchical VAE" in (out / "README.md").read_text()
    # the CLI on the folder
    assert cli_main(["evaluate", str(out), "--max-samples", "32", "--importance-samples", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["family"] == "hvae"
    assert printed["bits_per_dim_elbo"] == pytest.approx(metrics["bits_per_dim_elbo"], rel=1e-5)
    assert cli_main(["sample", str(out), "--num-images", "4", "--out", str(tmp_path / "g.png"),
                     "--temperature", "0.8"]) == 0
    # 2 x 2 samples at the data's own 28x28 (training padded them to 32x32)
    assert np.asarray(PIL.Image.open(tmp_path / "g.png")).shape == (56, 56, 3)
