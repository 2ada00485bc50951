"""Sample quality of a pixel-pass decoder names what it measured: the plain fd_fmnist is of draws from the model,
the greedy chain of pass means has keys of its own, and the card says which images its grid and figures are
(tiny configs, CPU)."""

import json

import pytest
import torch

from hfgen import HierarchicalVAEModel, VAEModel
from hfgen.families import HVAEFamily, VAEFamily
from hfgen.hub import card_metrics, render_model_card
from hfgen.metrics import evaluate_samples, extract_features, load_feature_net
from hfgen.metrics.frechet import feature_statistics, frechet_distance
from hfgen.metrics.reference import ReferenceStatistics
from hfgen.metrics.sample_quality import pil_to_uint8

from conftest import ROOT

EXAMPLE_CARDS = ROOT / "docs" / "model_cards"
# 32x32 around 28x28, the feature network's input
MODELS = {
    "vae": (VAEFamily, VAEModel, dict(sample_size=32, block_out_channels=[8, 16], latent_channels=2, latent_dim=4,
                                      source_size=(28, 28))),
    "hvae": (HVAEFamily, HierarchicalVAEModel, dict(sample_size=32, block_out_channels=[8, 8, 8],
                                                    groups_per_scale=[0, 1, 1], encoder_blocks_per_scale=[0, 1, 1],
                                                    latent_channels=2, output_blocks=0, source_size=(28, 28))),
}


def _pipeline(name, passes):
    """A family and the pipeline of a tiny model whose zero-initialised layers are perturbed."""
    family_class, model_class, config = MODELS[name]
    torch.manual_seed(0)
    model = model_class(**config, pixel_passes=passes, pixel_pass_layers=1 if passes > 1 else 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    family = family_class()
    pipeline = family.make_pipeline(model.eval())
    pipeline.set_progress_bar_config(disable=True)
    return family, pipeline


def _fd_of_pipeline_images(pipeline, net, reference, **call):
    """fd_fmnist of 2 batches of 16 drawn as ``generate_uint8`` seeds them (batch b: seed 0 * 1_000_003 + b)."""
    # the padded square: what fd compares (a VAE decodes the zero border itself, so it equals the 28x28 images
    # padded back as the data layer pads them)
    images = torch.cat([pil_to_uint8(pipeline(batch_size=16, generator=torch.Generator().manual_seed(b),
                                              crop_to_source=False, **call).images) for b in range(2)])
    return frechet_distance(*feature_statistics(extract_features(net, images, show_progress=False)),
                            reference.mean, reference.cov)


@pytest.mark.parametrize("name", MODELS)
def test_fd_of_a_pass_decoder_is_of_draws_and_the_greedy_chain_has_its_own_key(name):
    family, pipeline = _pipeline(name, passes=4)
    net = load_feature_net()
    real = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    real[..., 2:30, 2:30] = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(1),
                                          dtype=torch.uint8)
    reference = ReferenceStatistics.from_features(extract_features(net, real, show_progress=False))
    kwargs = dict(num_samples=32, metrics=("fd",), batch_size=16, net=net, show_progress=False)
    draws = evaluate_samples(family, pipeline, reference, **kwargs)
    greedy = evaluate_samples(family, pipeline, reference, greedy_passes=True, **kwargs)
    assert draws["sampled_images"] == "draws" and "fd_fmnist_greedy" not in draws
    assert "fd_fmnist" not in greedy and "sampled_images" not in greedy
    of_draws = _fd_of_pipeline_images(pipeline, net, reference, sample_pixels=True)
    of_greedy = _fd_of_pipeline_images(pipeline, net, reference, sample_pixels=False)
    assert draws["fd_fmnist"] == pytest.approx(of_draws, rel=1e-6)
    assert greedy["fd_fmnist_greedy"] == pytest.approx(of_greedy, rel=1e-6)
    assert abs(of_draws - of_greedy) > 1e-3 * of_draws  # the two are different images


@pytest.mark.parametrize("name", MODELS)
def test_one_pass_models_show_the_mean_and_refuse_the_greedy_option(name):
    family, pipeline = _pipeline(name, passes=1)
    model_config = dict(family.model_of(pipeline).config)
    assert family.sample_kind(model_config, {}) == "mean"
    generator = torch.Generator().manual_seed(0)
    shown = pil_to_uint8(family.sample_images(pipeline, 4, generator))
    mean = pil_to_uint8(pipeline(batch_size=4, generator=torch.Generator().manual_seed(0)).images)
    assert torch.equal(shown, mean)
    with pytest.raises(ValueError, match="pixel_passes=1"):
        family.sample_images(pipeline, 1, torch.Generator(), greedy_passes=True)
    with pytest.raises(ValueError, match="sample_pixels"):
        family.sample_images(pipeline, 1, torch.Generator(), sample_pixels=True)


def _example(name):
    folder = EXAMPLE_CARDS / name
    return json.loads((folder / "metrics.json").read_text()), json.loads((folder / "training_config.json").read_text())


def test_card_says_what_a_pass_decoders_grid_and_fd_show():
    metrics, training_config = _example("hvae-small-cpu")
    assert training_config["model_config"]["pixel_passes"] == 4
    metrics = {key: value for key, value in metrics.items() if key not in ("grid_images", "sampled_images")}
    metrics.update(fd_fmnist=7.0, num_generated=10000, sampled_images="draws", grid_images="draws",
                   fd_fmnist_greedy=7.4)
    card = render_model_card(HVAEFamily(), metrics, training_config, "someone/hvae")
    assert "Samples (temperature 1 in every latent group; draws from the model), EMA weights." in card.text
    rows = {row["key"]: row for row in card_metrics("hvae", metrics)}
    assert rows["fd_fmnist"]["name"].endswith(", of draws from the model") and rows["fd_fmnist"]["value"] == 7.0
    assert "greedy chain" in rows["fd_fmnist_greedy"]["name"] and rows["fd_fmnist_greedy"]["value"] == 7.4
    assert "| Fréchet distance in hfgen's Fashion-MNIST features (not FID), of draws from the model | 7.0000 |" \
        in card.text


def test_card_of_a_folder_from_before_draws_files_its_fd_as_the_greedy_chain():
    """A pass decoder's folder written when grids and fd_fmnist were its greedy chain (no ``sampled_images``): the
    card's grid says so, and its fd is filed under ``fd_fmnist_greedy``, never under the plain key."""
    metrics, training_config = _example("hvae-small-cpu")
    metrics = {key: value for key, value in metrics.items() if key not in ("grid_images", "sampled_images")}
    metrics.update(fd_fmnist=7.4, num_generated=10000)
    card = render_model_card(HVAEFamily(), metrics, training_config, "someone/hvae")
    assert "latent group; the greedy chain of the pixel passes" in card.text
    types = [result.metric_type for result in card.data.eval_results]
    assert "fd_fmnist_greedy" in types and "fd_fmnist" not in types
    one_pass = dict(training_config, model_config=dict(training_config["model_config"], pixel_passes=1))
    card = render_model_card(HVAEFamily(), metrics, one_pass, "someone/hvae")
    assert "latent group; the mean of p(x | z) for z drawn from the prior)" in card.text
    assert "fd_fmnist" in [result.metric_type for result in card.data.eval_results]
