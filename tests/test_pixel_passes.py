"""``pixel_passes``: p(x | z) decoded in interleaved passes (InterleavedPixelPasses), for the VAE and the
hierarchical VAE (tiny configs, CPU)."""

import itertools
import json

import numpy as np
import pytest
import torch

from hfgen import HierarchicalVAEModel, VAEModel
from hfgen.families import HVAEFamily, VAEFamily
from hfgen.models.likelihoods import InterleavedPixelPasses, SourceRegion, get_likelihood
from hfgen.remote_code import bundle_modules
from hfgen.training import build_parser, resolve_config

from conftest import ROOT

# 8x8 squares around 6x6 images, so the border is exercised too
MODELS = {
    "vae": (VAEModel, dict(sample_size=8, block_out_channels=[8, 16], latent_channels=2, latent_dim=4,
                           source_size=(6, 6))),
    "hvae": (HierarchicalVAEModel, dict(sample_size=8, block_out_channels=[8, 8, 8], groups_per_scale=[0, 1, 1],
                                        encoder_blocks_per_scale=[0, 1, 1], latent_channels=2, output_blocks=0,
                                        source_size=(6, 6))),
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=3, seed=0):
    """8-bit 6x6 images in the middle of an 8x8 zero border."""
    x = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    x[..., 1:7, 1:7] = torch.randint(0, 256, (n, 1, 6, 6), generator=_gen(seed), dtype=torch.uint8)
    return x


def _model(name, passes=4, seed=0, layers=0):
    """A tiny model whose zero-initialised layers (the context convolution among them) are perturbed."""
    cls, config = MODELS[name]
    torch.manual_seed(seed)
    model = cls(**config, pixel_passes=passes, pixel_pass_layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _state(model, x):
    """The decoder state ``log_prob`` and the decoders take, for the posterior mean of images ``x``."""
    if isinstance(model, VAEModel):
        return model.decode_parameters(model.encode(model.to_uint8(x).float() / 127.5 - 1).latent_dist.mode())
    return model.reconstruct_parameters(x)


def _output_layer(model):
    return model.decoder.conv_out if isinstance(model, VAEModel) else model.conv_out


def _pass_of(passes, size=8):
    """The pass that decodes each pixel of a ``size`` square, as the docstring of InterleavedPixelPasses says."""
    order = torch.zeros(size, size, dtype=torch.long)
    for i, j in itertools.product(range(size), range(size)):
        order[i, j] = (i + j) % 2 if passes == 2 else {(0, 0): 0, (1, 1): 1, (0, 1): 2, (1, 0): 3}[(i % 2, j % 2)]
    return order


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("passes,layers", [(2, 0), (4, 0), (4, 2)])
def test_each_pixel_depends_only_on_the_pixels_of_earlier_passes(name, passes, layers):
    """Changing one pixel changes the likelihood's parameters of pixels in later passes only (never its own pass's
    or an earlier one's), and some later pixel does depend on it."""
    model = _model(name, passes, layers=layers)
    x = _images(1)
    with torch.no_grad():
        state = _state(model, x)

        def params(image):
            return model.interleaved_passes.parameters_given(state, image.float() / 127.5 - 1, _output_layer(model))

        base = params(x)
        order = _pass_of(passes)
        influences = 0
        for i, j in itertools.product(range(1, 7), range(1, 7)):
            y = x.clone()
            y[0, 0, i, j] = (int(y[0, 0, i, j]) + 97) % 256
            changed = (params(y) - base).abs().amax(dim=(0, 1)) > 0
            assert not (changed & (order <= order[i, j])).any(), (i, j)
            influences += int(changed.any())
    assert influences > 0


@pytest.mark.parametrize("passes,layers", [(2, 0), (4, 0), (4, 1)])
def test_interleaved_likelihood_sums_to_one_over_every_image(passes, layers):
    """Summed over all 2^16 binary 4x4 images, p(x | state) is 1: the passes are a proper factorisation."""
    torch.manual_seed(passes)
    module = InterleavedPixelPasses(passes, in_channels=1, width=3, sample_size=4, layers=layers)
    for conv in (module.context, *module.layers):
        torch.nn.init.normal_(conv.weight, std=1.0)
    output = torch.nn.Conv2d(3, 1, 3, padding=1)
    likelihood = get_likelihood("bernoulli")
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=16))).view(-1, 1, 4, 4)
    state = torch.randn(1, 3, 4, 4).expand(bits.shape[0], -1, -1, -1)
    with torch.no_grad():
        log_p = likelihood.log_prob(module.parameters_given(state, likelihood.as_image(bits), output), bits)
    torch.testing.assert_close(torch.logsumexp(log_p.double(), 0), torch.zeros((), dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_decoding_pass_by_pass_agrees_with_the_scored_factorisation(name):
    """The mean decoded pass by pass is the mean the teacher-forced parameters give for that image (so sampling
    and scoring use the same conditionals); pixel samples are reproducible from a generator; the border stays 0."""
    model = _model(name)
    x = _images(2)
    with torch.no_grad():
        state = _state(model, x)
        if name == "vae":
            z = model.encode(model.to_uint8(x).float() / 127.5 - 1).latent_dist.mode()

            def decode(_, **kwargs):
                return model.decode(z, **kwargs).sample
        else:
            decode = model.decode_image
        mean_image = decode(state)
        region = SourceRegion(8, (6, 6))
        teacher = model.interleaved_passes.parameters_given(state, mean_image, _output_layer(model))
        expected = model.pixel_likelihood.mean(teacher, 1)
        torch.testing.assert_close(region.crop(mean_image), region.crop(expected), atol=1.0 / 255, rtol=0)
        drawn = [decode(state, sample_pixels=True, generator=_gen(5)) for _ in range(2)]
    assert torch.equal(drawn[0], drawn[1])
    for image in (mean_image, drawn[0]):
        border = torch.ones(8, 8, dtype=torch.bool)
        border[1:7, 1:7] = False
        assert (image[..., border] == -1).all()
        levels = (image + 1) * 127.5
        assert (levels - levels.round()).abs().max() < 1e-4  # on the 8-bit grid


@pytest.mark.parametrize("name", MODELS)
def test_one_pass_is_the_model_without_the_option_bit_for_bit(name):
    cls, config = MODELS[name]
    torch.manual_seed(1)
    default = cls(**config)
    torch.manual_seed(1)
    explicit = cls(**config, pixel_passes=1)
    assert default.interleaved_passes is None and default.config.pixel_passes == 1
    a, b = default.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # an untrained passes model is the independent one: its context convolution starts at zero
    torch.manual_seed(1)
    passes = cls(**config, pixel_passes=4)
    shared = {k: v for k, v in passes.state_dict().items() if not k.startswith("interleaved_passes.")}
    assert shared.keys() == a.keys() and all(torch.equal(a[k], shared[k]) for k in a)
    x = _images()
    torch.testing.assert_close(default(x, generator=_gen()).elbo, passes(x, generator=_gen()).elbo, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_bounds_train_round_trip_and_bundled_code(name, tmp_path):
    """The ELBO and the importance-weighted bound are finite and ordered, a training step reaches the context
    convolution, and the model saved with save_pretrained loads (hfgen and the bundled remote code) with the same
    bounds."""
    model = _model(name)
    x = _images()
    bounds = model.log_likelihood_bounds(x, importance_samples=4, generator=_gen())
    assert torch.isfinite(bounds.nats_per_image_elbo).all()
    assert (bounds.nats_per_image_iw <= bounds.nats_per_image_elbo + 1e-4).all()
    model.train()
    model(x, generator=_gen()).loss.backward()
    assert model.interleaved_passes.context.weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["pixel_passes"] == 4
    cls = MODELS[name][0]
    loaded = cls.from_pretrained(tmp_path / "model").eval()
    namespace = {}
    exec(bundle_modules(ROOT / "hfgen" / "models" / f"{name}.py"), namespace)
    remote = namespace[cls.__name__].from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        for other in (loaded, remote):
            torch.testing.assert_close(other.log_likelihood_bounds(x, generator=_gen()).nats_per_image_elbo,
                                       model.log_likelihood_bounds(x, generator=_gen()).nats_per_image_elbo,
                                       rtol=1e-5, atol=0)


@pytest.mark.parametrize("family_class", [VAEFamily, HVAEFamily])
def test_pixel_passes_flag_reaches_the_model_and_bad_values_are_refused(family_class):
    family = family_class()
    parser = build_parser(family)
    _, model_config = resolve_config(parser.parse_args(["--output_dir", "x", "--preset", "tiny"]), family)
    assert "pixel_passes" not in model_config
    args = parser.parse_args(["--output_dir", "x", "--preset", "tiny", "--pixel_passes", "4"])
    _, model_config = resolve_config(args, family)
    assert family.build_model(model_config, 1, 16).config.pixel_passes == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--output_dir", "x", "--pixel_passes", "3"])
    for cls in (VAEModel, HierarchicalVAEModel):
        with pytest.raises(ValueError, match=r"pixel_passes must be one of \(1, 2, 4\), got 3"):
            cls(pixel_passes=3)


@pytest.mark.parametrize("name", MODELS)
def test_pipelines_sample_pass_by_pass(name):
    """The family's pipeline samples from a passes model: one generator per image gives that image alone, with
    and without pixel sampling."""
    model = _model(name)
    family = VAEFamily() if name == "vae" else HVAEFamily()
    pipeline = family.make_pipeline(model)
    pipeline.set_progress_bar_config(disable=True)
    for sample_pixels in (False, True):
        both = pipeline(batch_size=2, generator=[_gen(1), _gen(2)], sample_pixels=sample_pixels,
                        output_type="np").images
        second = pipeline(batch_size=1, generator=[_gen(2)], sample_pixels=sample_pixels, output_type="np").images
        assert both.shape == (2, 6, 6, 1) and ((both >= 0) & (both <= 1)).all()  # the data's own 6x6
        np.testing.assert_allclose(both[1], second[0], atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_pass_layers_start_as_the_identity_and_keep_the_order(name):
    """Extra pass layers start at zero (the model computes what the one without them does) and, once trained,
    still let a pixel see only the passes before its own."""
    cls, config = MODELS[name]
    torch.manual_seed(2)
    plain = cls(**config, pixel_passes=4)
    torch.manual_seed(2)
    deeper = cls(**config, pixel_passes=4, pixel_pass_layers=2)
    assert len(deeper.interleaved_passes.layers) == 2
    x = _images()
    torch.testing.assert_close(plain(x, generator=_gen()).elbo, deeper(x, generator=_gen()).elbo, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"pixel_pass_layers=1 belongs to .* set pixel_pass_layers=0"):
        cls(**config, pixel_pass_layers=1)
    with pytest.raises(ValueError, match="pixel_pass_layers must be >= 0, got -1"):
        cls(**config, pixel_passes=4, pixel_pass_layers=-1)
