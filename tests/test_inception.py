"""fid_inception's Inception-v3: loading a local weight file (never a download), features, cached statistics.

The real FID weights are not available offline, so a randomly initialised network is saved in the same format
(a plain state dict, as pytorch-fid's pt_inception-2015-12-05-*.pth; and as .safetensors). Inception at 299x299
is slow on a CPU: every test uses a handful of images.
"""

import socket

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hfgen.metrics import (
    FIDInceptionV3, extract_inception_features, frechet_distance_of_features, inception_reference_statistics,
    inception_weights_hash, load_inception,
)

NUM_IMAGES = 4


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A random FID Inception-v3 (He-initialised so activations neither vanish nor explode through the 94
    layers, with random BatchNorm statistics) saved as .pth without ``num_batches_tracked`` (as the pytorch-fid
    file, written by an older PyTorch) and as .safetensors."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    folder = tmp_path_factory.mktemp("inception")
    torch.save(state, folder / "pt_inception-random.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "inception-random.safetensors"))
    return folder / "pt_inception-random.pth", folder / "inception-random.safetensors", state


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (NUM_IMAGES, 1, 32, 32), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def features(random_weights, images):
    pth, _, _ = random_weights
    return extract_inception_features(load_inception(pth), images, show_progress=False)


def test_a_pth_state_dict_loads_and_gives_finite_2048_features(features):
    assert features.shape == (NUM_IMAGES, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert features.abs().sum() > 0 and not torch.allclose(features[0], features[1])  # they see the images


def test_fd_of_a_set_against_itself_is_zero(features):
    scale = features.var(0).sum().item()  # the trace of the covariance: what FD is measured against
    assert frechet_distance_of_features(features, features) <= 1e-6 * scale


def test_the_safetensors_copy_gives_the_same_features(random_weights, images, features):
    _, safetensors_path, _ = random_weights
    again = extract_inception_features(load_inception(safetensors_path), images, show_progress=False)
    torch.testing.assert_close(again, features, rtol=1e-5, atol=1e-6)


def test_grayscale_is_the_same_image_repeated_to_three_channels(random_weights, images, features):
    net = load_inception(random_weights[0])
    rgb = extract_inception_features(net, images[:2].expand(-1, 3, -1, -1), show_progress=False)
    torch.testing.assert_close(rgb, features[:2], rtol=1e-5, atol=1e-6)
    preprocessed = net.preprocess(images[:2])
    assert preprocessed.shape == (2, 3, 299, 299)
    assert preprocessed.min() >= -1 and preprocessed.max() <= 1


def test_a_file_missing_a_key_fails_naming_the_file_and_the_key(random_weights, tmp_path):
    _, _, state = random_weights
    broken = dict(state)
    del broken["Mixed_6e.branch7x7dbl_3.bn.running_var"]
    broken["Mixed_8a.conv.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as error:
        load_inception(path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys (1): Mixed_6e.branch7x7dbl_3.bn.running_var" in message
    assert "unexpected keys (1): Mixed_8a.conv.weight" in message


def test_a_file_with_a_wrongly_shaped_tensor_fails_naming_it(random_weights, tmp_path):
    _, _, state = random_weights
    path = tmp_path / "other-classes.safetensors"
    save_file({**{k: v.contiguous() for k, v in state.items()}, "fc.weight": torch.zeros(1000, 2048)}, str(path))
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        load_inception(path)


def test_a_file_that_is_no_state_dict_fails_naming_it(tmp_path):
    path = tmp_path / "not-weights.pth"
    path.write_bytes(b"these are not weights")
    with pytest.raises(ValueError, match="not-weights.pth"):
        load_inception(path)
    path = tmp_path / "not-weights.safetensors"
    path.write_bytes(b"these are not weights either")
    with pytest.raises(ValueError, match="not-weights.safetensors"):
        load_inception(path)


def test_a_missing_path_fails_naming_it(tmp_path):
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception(missing)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception_reference_statistics(missing, images=torch.zeros(2, 1, 32, 32, dtype=torch.uint8),
                                       cache_directory=tmp_path, show_progress=False)


def test_reference_statistics_are_cached_under_the_weight_file_hash(random_weights, images, features, tmp_path):
    pth, safetensors_path, _ = random_weights
    kwargs = dict(images=images, max_samples=NUM_IMAGES, cache_directory=tmp_path, show_progress=False)
    fresh = inception_reference_statistics(pth, **kwargs)
    cached = inception_reference_statistics(pth, **kwargs)
    assert not fresh.from_cache and cached.from_cache and cached.num_images == NUM_IMAGES
    assert torch.equal(fresh.mean, cached.mean) and torch.equal(fresh.cov, cached.cov)
    torch.testing.assert_close(fresh.mean, features.double().mean(0))
    assert fresh.key["feature_net_hash"] == inception_weights_hash(pth)
    # another weight file (here: the same tensors in another format) is another cache entry
    assert inception_weights_hash(safetensors_path) != inception_weights_hash(pth)
    assert not inception_reference_statistics(safetensors_path, **kwargs).from_cache
    assert len(list((tmp_path / "reference").glob("*.safetensors"))) == 2
