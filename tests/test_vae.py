"""VAEModel and VAEPipeline on tiny configs (CPU)."""

import numpy as np
import PIL.Image
import pytest
import torch

from hfgen import VAEModel, VAEPipeline

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4)


def _images(n=6, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("likelihood,num_mixtures,channels", [
    ("discretized_logistic", 1, 1), ("discretized_logistic", 3, 3), ("bernoulli", 1, 1), ("gaussian", 1, 3)])
def test_forward_parts_add_up(likelihood, num_mixtures, channels):
    model = VAEModel(in_channels=channels, sample_size=16, likelihood=likelihood, num_mixtures=num_mixtures, **TINY)
    x = _images(channels=channels)
    out = model(x, generator=_gen(), kl_weight=0.5)
    for part in (out.reconstruction_nll, out.kl, out.elbo, out.bits_per_dim):
        assert part.shape == (6,) and torch.isfinite(part).all()
    assert torch.allclose(out.elbo, -(out.reconstruction_nll + out.kl))
    assert (out.kl >= 0).all()
    d = channels * 16 * 16
    assert torch.allclose(out.loss, ((out.reconstruction_nll + 0.5 * out.kl) / d).mean())
    assert torch.allclose(out.bits_per_dim, -out.elbo / (d * np.log(2)))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_float_and_uint8_inputs_agree():
    model = VAEModel(sample_size=16, **TINY)
    x = _images()
    a = model(x, generator=_gen()).elbo
    b = model(x.float() / 127.5 - 1, generator=_gen()).elbo
    assert torch.allclose(a, b)


def test_wrong_shape_and_config_are_named():
    model = VAEModel(sample_size=16, **TINY)
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16\).*got \(2, 3, 16, 16\)"):
        model(_images(2, channels=3))
    with pytest.raises(ValueError, match="sample_size=30 must be a multiple of 4"):
        VAEModel(sample_size=30, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="unknown likelihood 'laplace'"):
        VAEModel(likelihood="laplace")


def test_save_load_round_trip_is_identical(tmp_path):
    model = VAEModel(sample_size=16, **TINY)
    model.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VAEModel.from_pretrained(tmp_path / "vae")
    x = _images()
    assert torch.equal(model(x, generator=_gen()).elbo, loaded(x, generator=_gen()).elbo)
    assert loaded.config.block_out_channels == [8, 16]


def test_importance_weighted_bound():
    torch.manual_seed(0)
    model = VAEModel(sample_size=16, **TINY).eval()
    x = _images(4)
    # K = 1: the IW bound is the single-sample ELBO, so its mean over many draws matches forward()'s ELBO.
    draws = 300
    xs = x.repeat(draws, 1, 1, 1)
    k1 = model.log_likelihood_bounds(xs, importance_samples=1, generator=_gen(1))
    assert torch.equal(k1.nats_per_image_iw, k1.nats_per_image_elbo)
    with torch.no_grad():
        fwd = -model(xs, generator=_gen(2)).elbo
    diff = (k1.nats_per_image_elbo.mean() - fwd.mean()).abs()
    stderr = torch.sqrt(k1.nats_per_image_elbo.var() / len(xs) + fwd.var() / len(xs))
    assert diff < 4 * stderr + 1e-3
    # K = 64: a tighter (lower) negative log-likelihood bound than the ELBO, image by image.
    k64 = model.log_likelihood_bounds(x, importance_samples=64, generator=_gen(3), max_decode_batch=50)
    assert (k64.nats_per_image_iw <= k64.nats_per_image_elbo + 1e-4).all()
    assert k64.nats_per_image_iw.mean() < k1.nats_per_image_elbo.view(draws, 4).mean()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = VAEModel(sample_size=16, **TINY)
    x = _images()
    model(x, generator=_gen()).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    model(x, generator=_gen()).loss.backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_pipeline_sampling_output_types_and_temperature():
    pipe = VAEPipeline(vae=VAEModel(sample_size=16, **TINY))
    pipe.set_progress_bar_config(disable=True)
    pil = pipe(batch_size=3, generator=_gen()).images
    assert len(pil) == 3 and pil[0].size == (16, 16) and pil[0].mode == "L"
    arr = pipe(batch_size=2, generator=_gen(), output_type="np").images
    assert arr.shape == (2, 16, 16, 1) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(batch_size=2, generator=_gen(), output_type="pt", return_dict=False)[0]
    assert pt.shape == (2, 1, 16, 16)
    # Same seed, same images; temperature 0 decodes z = 0 whatever the seed.
    assert torch.equal(pipe(batch_size=2, generator=_gen(5), output_type="pt").images,
                       pipe(batch_size=2, generator=_gen(5), output_type="pt").images)
    assert torch.equal(pipe(batch_size=2, generator=_gen(5), temperature=0, output_type="pt").images,
                       pipe(batch_size=2, generator=_gen(6), temperature=0, output_type="pt").images)
    drawn = pipe(batch_size=2, generator=_gen(5), sample_pixels=True, output_type="pt").images
    assert drawn.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="temperature"):
        pipe(temperature=-1)


def test_pipeline_folder_round_trip_and_reconstruction(tmp_path):
    pipe = VAEPipeline(vae=VAEModel(sample_size=16, **TINY))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = VAEPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    a = pipe(batch_size=2, generator=_gen(), output_type="pt").images
    b = loaded(batch_size=2, generator=_gen(), output_type="pt").images
    assert torch.equal(a, b)
    # reconstruction accepts PIL images, uint8 tensors and [-1, 1] tensors alike
    x = _images(2, size=16)
    pil = [PIL.Image.fromarray(im[0].numpy(), mode="L") for im in x]
    from_pil = loaded.reconstruct(pil, output_type="pt")
    from_uint8 = loaded.reconstruct(x, output_type="pt")
    assert from_pil.shape == (2, 1, 16, 16)
    assert torch.allclose(from_pil, from_uint8, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16\)"):
        loaded.reconstruct(_images(1, size=8))


def test_vector_latent():
    model = VAEModel(sample_size=16, latent_dim=12, **TINY)
    assert model.latent_shape == (12, 1, 1)
    out = model(_images(), generator=_gen())
    assert torch.allclose(out.elbo, -(out.reconstruction_nll + out.kl))
    bounds = model.log_likelihood_bounds(_images(2), importance_samples=8, generator=_gen())
    assert (bounds.nats_per_image_iw <= bounds.nats_per_image_elbo + 1e-4).all()
    pipe = VAEPipeline(vae=model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=2, generator=_gen(), output_type="pt").images.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        VAEModel(latent_dim=0)
