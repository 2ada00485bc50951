"""Sample-quality metrics in hfgen's Fashion-MNIST feature space, on real images."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from hfgen.cli import main
from hfgen.data import images_to_uint8, load_image_dataset
from hfgen.families import VAEFamily
from hfgen.metrics import (
    FeatureNet, extract_features, feature_net_hash, frechet_distance, frechet_distance_of_features, kernel_distance,
    load_feature_net, polynomial_mmd2_unbiased, precision_recall, reference_statistics,
)
from hfgen.training import build_parser, train

from conftest import requires_fashion_mnist, reset_accelerate_state

SUBSET = 2000


@pytest.fixture(scope="module")
def net():
    return load_feature_net("fmnist")


@pytest.fixture(scope="module")
def test_images():
    return images_to_uint8(load_image_dataset("fashion_mnist", "test"), sample_size=32, channels=1,
                           show_progress=False)


@pytest.fixture(scope="module")
def test_features(net, test_images):
    return extract_features(net, test_images, show_progress=False)


@pytest.fixture(scope="module")
def train_features(net):
    images = images_to_uint8(load_image_dataset("fashion_mnist", "train"), sample_size=32, channels=1,
                             max_samples=SUBSET, show_progress=False)
    return extract_features(net, images, show_progress=False)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return images
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = images.float()
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- the formulas


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    # diagonal covariances: FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2; a rotation of both changes nothing
    a, b = torch.tensor([1.0, 4.0, 0.0]), torch.tensor([9.0, 1.0, 2.0])
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = float((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected, rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    rotated = frechet_distance(q @ m1.double(), q @ torch.diag(a).double() @ q.T, q @ m2.double(),
                               q @ torch.diag(b).double() @ q.T)
    # A zero eigenvalue of C1^(1/2) C2 C1^(1/2) comes back from eigvalsh as about +-eps * ||C|| (eps = 2.2e-16 in
    # float64), and its square root as about sqrt(eps * ||C||) ~ 5e-8: that, not eps, is what float64 promises
    # here (seen: 11.99999994 against 12 on one BLAS). 1e-6 absolute leaves a margin of 20 over that error.
    assert rotated == pytest.approx(expected, abs=1e-6)


def test_unbiased_mmd_is_centred_on_zero_for_one_distribution():
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor([polynomial_mmd2_unbiased(torch.randn(200, 8, generator=gen),
                                                    torch.randn(200, 8, generator=gen)) for _ in range(200)])
    assert abs(values.mean()) < 3 * values.std() / len(values) ** 0.5
    assert polynomial_mmd2_unbiased(torch.randn(200, 8, generator=gen), torch.randn(200, 8, generator=gen) + 1) > 0.1


# ---------------------------------------------------------------------------------------------- on real data


@requires_fashion_mnist
def test_fd_of_real_images_is_far_below_fd_of_noise(net, test_features, train_features):
    noise = torch.randint(0, 256, (SUBSET, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fd_real = frechet_distance_of_features(test_features[:SUBSET], train_features)
    fd_noise = frechet_distance_of_features(extract_features(net, noise, show_progress=False), train_features)
    assert fd_real < 0.05 * fd_noise, (fd_real, fd_noise)


@requires_fashion_mnist
def test_fd_rises_monotonically_with_blur(net, test_images, train_features):
    values = [frechet_distance_of_features(extract_features(net, blur(test_images[:SUBSET], s), show_progress=False),
                                           train_features) for s in (0.0, 0.5, 1.0, 1.5, 2.5)]
    assert all(a < b for a, b in zip(values, values[1:])), values


@requires_fashion_mnist
def test_kid_of_two_random_halves_of_the_test_split_is_consistent_with_zero(test_features):
    permutation = torch.randperm(test_features.shape[0], generator=torch.Generator().manual_seed(1))
    half = test_features.shape[0] // 2
    kid, kid_std = kernel_distance(test_features[permutation[:half]], test_features[permutation[half:]],
                                   num_subsets=50, subset_size=1000)
    assert kid_std > 0 and abs(kid) < 3 * kid_std, (kid, kid_std)
    noise_kid, _ = kernel_distance(test_features[:1000], torch.rand(1000, test_features.shape[1]) * 5, num_subsets=5)
    assert noise_kid > 100 * kid_std


@requires_fashion_mnist
def test_precision_and_recall_of_the_test_split_against_itself_are_one(test_features, train_features):
    precision, recall = precision_recall(test_features[:SUBSET], test_features[:SUBSET], k=3)
    assert precision == pytest.approx(1.0) and recall == pytest.approx(1.0)
    # unseen real images lie mostly inside the real manifold
    precision, recall = precision_recall(test_features[:SUBSET], train_features, k=3)
    assert precision > 0.6 and recall > 0.6, (precision, recall)


@requires_fashion_mnist
def test_the_shipped_feature_net_reloads_to_identical_features(net, test_images, test_features, tmp_path):
    again = load_feature_net("fmnist")
    assert torch.equal(extract_features(again, test_images[:256], show_progress=False), test_features[:256])
    assert feature_net_hash("fmnist") == feature_net_hash("fmnist") and len(feature_net_hash("fmnist")) == 16
    net.save_pretrained(tmp_path / "copy", safe_serialization=True)
    copy = FeatureNet.from_pretrained(tmp_path / "copy").eval()
    assert torch.equal(extract_features(copy, test_images[:256], show_progress=False), test_features[:256])
    assert net.config.feature_dim == test_features.shape[1]
    assert (net(test_images[:500]).argmax(1) >= 0).all()


@requires_fashion_mnist
def test_reference_statistics_from_the_cache_equal_a_fresh_computation(net, tmp_path):
    kwargs = dict(max_samples=1000, net=net, cache_directory=tmp_path, show_progress=False)
    fresh = reference_statistics("fashion_mnist", "test", **kwargs)
    cached = reference_statistics("fashion_mnist", "test", **kwargs)
    assert not fresh.from_cache and cached.from_cache
    assert len(list((tmp_path / "reference").glob("*.safetensors"))) == 1
    for name in ("features", "mean", "cov", "knn_radii"):
        assert torch.equal(getattr(fresh, name), getattr(cached, name)), name
    # another split or preprocessing is another cache entry
    other = reference_statistics("fashion_mnist", "test", **{**kwargs, "max_samples": 500})
    assert not other.from_cache and other.features.shape[0] == 500


# ---------------------------------------------------------------------------------------------- CLI and training


@pytest.fixture(scope="module")
def trained_with_fd(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("HFGEN_CACHE")
    os.environ["HFGEN_CACHE"] = str(cache)
    out = tmp_path_factory.mktemp("metrics") / "vae"
    args = build_parser(VAEFamily()).parse_args([
        "--output_dir", str(out), "--preset", "tiny", "--max_train_samples", "256", "--max_train_steps", "4",
        "--final_eval_max_samples", "32", "--fd_steps", "2", "--fd_num_samples", "64", "--report_to", "none"])
    train(VAEFamily(), args)
    reset_accelerate_state()
    yield out, cache
    if previous is None:
        os.environ.pop("HFGEN_CACHE", None)
    else:
        os.environ["HFGEN_CACHE"] = previous


@requires_fashion_mnist
def test_training_with_fd_steps_writes_fd_fmnist_to_metrics_json(trained_with_fd):
    out, cache = trained_with_fd
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["fd_fmnist"] > 0 and saved["fd_num_samples"] == 64
    # the training-time fd is against the validation split (held out of train), never test, and says so
    assert saved["fd_split"] == "validation"
    assert len(list((cache / "reference").glob("fashion_mnist-validation-*.safetensors"))) == 1


@requires_fashion_mnist
def test_evaluate_prints_sample_quality_keys(trained_with_fd, capsys):
    trained_with_fd, _ = trained_with_fd
    # 2000: KID's subsets of 1000 generated images must differ for its std to mean anything (fewer are refused)
    assert main(["evaluate", str(trained_with_fd), "--metrics", "fd,kid,pr", "--num-samples", "2000",
                 "--max-samples", "1000", "--batch-size", "128", "--temperature", "0.9"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("fd_fmnist", "kid_fmnist", "kid_fmnist_std", "precision", "recall", "num_generated"):
        assert key in printed, key
    assert "bits_per_dim_elbo" not in printed
    assert printed["num_generated"] == 2000 and printed["sampling"]["temperature"] == 0.9
    assert 0 <= printed["precision"] <= 1 and 0 <= printed["recall"] <= 1 and printed["fd_fmnist"] > 0
    # with bpd as well: both kinds of keys; the reference features now come from the cache
    assert main(["evaluate", str(trained_with_fd), "--metrics", "bpd,fd", "--num-samples", "100",
                 "--max-samples", "1000"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "bits_per_dim_elbo" in printed and "fd_fmnist" in printed and printed["reference"]["from_cache"]


@requires_fashion_mnist
def test_evaluate_refuses_unknown_metrics_and_options_the_family_lacks(trained_with_fd, capsys):
    trained_with_fd, _ = trained_with_fd
    assert main(["evaluate", str(trained_with_fd), "--metrics", "fid"]) == 2
    assert "--metrics" in capsys.readouterr().err
    assert main(["evaluate", str(trained_with_fd), "--metrics", "fd", "--steps", "10", "--num-samples", "10"]) == 2
    assert "--steps" in capsys.readouterr().err


@requires_fashion_mnist
def test_evaluate_with_inception_weights_prints_fid_inception_next_to_fd_fmnist(trained_with_fd, capsys, tmp_path):
    from hfgen.metrics import FIDInceptionV3

    trained_with_fd, _ = trained_with_fd
    weights = tmp_path / "pt_inception-random.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), weights)  # the real file is not available offline
    command = ["evaluate", str(trained_with_fd), "--metrics", "fd", "--num-samples", "6", "--max-samples", "6",
               "--batch-size", "6"]
    assert main(command + ["--inception-weights", str(weights)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["fid_inception"] >= 0 and printed["fd_fmnist"] > 0 and printed["num_generated"] == 6
    assert printed["fid_inception_num_reference"] == 6 and printed["reference"]["inception_weights"] == str(weights)
    missing = tmp_path / "no-such-weights.pth"
    assert main(command + ["--inception-weights", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
