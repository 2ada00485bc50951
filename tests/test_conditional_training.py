"""Class-conditional training end to end (--class_conditional): labels from the data, label dropout to the null
class, bounds of log p(x | y) and log p(x), per-class grids and figures, the CLI's --class and --guidance-scale."""

import json

import datasets
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard

from hfgen.cli import main
from hfgen.data import FASHION_MNIST_CLASS_NAMES, DataError, images_and_source_shape, load_image_dataset
from hfgen.evaluation import evaluate_likelihood
from hfgen.families import DDPMFamily, HVAEFamily, VAEFamily, load_pipeline
from hfgen.training import build_parser, train

from conftest import requires_fashion_mnist, reset_accelerate_state

TINY = ["--preset", "tiny", "--dataset", "fashion_mnist", "--max_train_samples", "128", "--eval_max_samples", "32",
        "--final_eval_max_samples", "24", "--report_to", "none", "--class_conditional", "--label_dropout", "0.3"]


def _train(family, out, *extra):
    metrics = train(family, build_parser(family).parse_args(["--output_dir", str(out), *TINY, *extra]))
    reset_accelerate_state()
    return metrics


@pytest.fixture(scope="module")
def conditional_vae(tmp_path_factory):
    out = tmp_path_factory.mktemp("conditional") / "vae"
    return out, _train(VAEFamily(), out, "--max_train_steps", "4", "--final_importance_samples", "2")


@requires_fashion_mnist
def test_a_conditional_vae_run_bounds_log_p_x_given_y_and_log_p_x(conditional_vae, capsys):
    out, metrics = conditional_vae
    assert metrics["class_names"] == list(FASHION_MNIST_CLASS_NAMES)
    # the plain keys bound -log p(x), through the null class; the bounds given the label say so in their names
    assert metrics["likelihood"]["given"] == "nothing (null class)" and "unconditional" not in metrics
    for key in ("bits_per_dim_elbo", "bits_per_dim_iw", "nats_per_image_elbo", "bits_per_dim_elbo_stderr"):
        given = key.replace("_stderr", "_given_label_stderr") if key.endswith("_stderr") else f"{key}_given_label"
        assert torch.isfinite(torch.tensor([metrics[key], metrics[given]])).all()
        assert metrics[key] != metrics[given]  # the label changes the bound
    assert json.loads((out / "metrics.json").read_text()) == metrics
    # the plain keys are what `hfgen evaluate` gives for the model without labels: the same images, K and seed
    assert main(["evaluate", str(out), "--max-samples", "24", "--importance-samples", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["likelihood"]["given"] == "nothing (null class)" and "unconditional" not in printed
    for key in ("bits_per_dim_elbo", "bits_per_dim_iw", "bits_per_dim_elbo_given_label",
                "bits_per_dim_iw_given_label"):
        assert printed[key] == pytest.approx(metrics[key], rel=1e-5), key
    pipeline, family = load_pipeline(str(out))
    images, shape = images_and_source_shape(load_image_dataset("fashion_mnist", "test"), sample_size=32, channels=1,
                                            max_samples=24, show_progress=False)
    null_class = evaluate_likelihood(family, family.model_of(pipeline).eval(), images, importance_samples=2,
                                     source_shape=shape, show_progress=False)  # no labels: -log p(x)
    assert null_class["bits_per_dim_elbo"] == pytest.approx(metrics["bits_per_dim_elbo"], rel=1e-5)
    # the card: each plain row names log p(x) (null class), each row given the label names it, in the model-index too
    card = (out / "README.md").read_text()
    assert "### Class-conditional" in card and "of log p(x | y) given the label" in card and "(null class)" in card
    index = {entry["type"]: entry for result in ModelCard.load(out / "README.md").data.to_dict()["model-index"]
             for entry in [m for r in result["results"] for m in r["metrics"]]}
    assert index["bits_per_dim_elbo"]["value"] == pytest.approx(metrics["bits_per_dim_elbo"])
    assert "of log p(x) (null class)" in index["bits_per_dim_elbo"]["name"]
    assert index["bits_per_dim_elbo_given_label"]["value"] == pytest.approx(metrics["bits_per_dim_elbo_given_label"])
    assert "given the label" in index["bits_per_dim_elbo_given_label"]["name"]
    assert "conditioned on the class label only (10 classes" in card
    config = json.loads((out / "vae" / "config.json").read_text())
    assert config["num_classes"] == 10 and config["class_names"] == list(FASHION_MNIST_CLASS_NAMES)
    # the training grid: 16 images (the tiny preset) // 10 classes = 1 per class, in class order in a 4 x 3 grid of 28x28 images
    assert PIL.Image.open(out / "samples.png").size == (4 * 28, 3 * 28)


@requires_fashion_mnist
def test_the_trained_pipeline_takes_class_names_and_indices(conditional_vae):
    out, _ = conditional_vae
    pipeline, family = load_pipeline(str(out))
    by_name = pipeline(class_labels=["Sneaker", "Bag"], generator=torch.Generator().manual_seed(3),
                       output_type="np").images
    by_index = pipeline(class_labels=[7, 8], generator=torch.Generator().manual_seed(3), output_type="np").images
    assert by_name.shape == (2, 28, 28, 1) and (by_name == by_index).all()
    with pytest.raises(ValueError, match="'sneakers' is not one of this model's classes; expected one of"):
        pipeline(class_labels="sneakers")
    unconditional = pipeline(batch_size=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert unconditional.shape == by_name.shape and not (unconditional == by_name).all()


@requires_fashion_mnist
def test_cli_samples_a_class_grid_and_evaluates_both_bounds_and_per_class_figures(conditional_vae, tmp_path,
                                                                                  capsys):
    out, _ = conditional_vae
    assert main(["sample", str(out), "--class", "Sneaker", "--class", "0", "--num-images", "6",
                 "--out", str(tmp_path / "two.png")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["classes"] == ["Sneaker", 0] and printed["num_images"] == 6  # two rows of three
    assert PIL.Image.open(tmp_path / "two.png").size[1] < PIL.Image.open(tmp_path / "two.png").size[0]
    assert main(["sample", str(out), "--num-images", "20", "--out", str(tmp_path / "all.png")]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 20  # every class, two each
    assert main(["evaluate", str(out), "--split", "test", "--max-samples", "40", "--metrics", "bpd,classes",
                 "--samples-per-class", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["likelihood"]["given"] == "nothing (null class)" and "bits_per_dim_elbo_given_label" in figures
    classes = figures["classes"]
    assert set(classes["per_class"]) == set(FASHION_MNIST_CLASS_NAMES) and classes["samples_per_class"] == 3
    assert 0.0 <= classes["class_accuracy"] <= 1.0 and sum(classes["null_class_histogram"].values()) == pytest.approx(1)
    for name, entry in classes["per_class"].items():  # a confusion row: fractions summing to 1, accuracy on the diagonal
        assert sum(entry["classified_as"].values()) == pytest.approx(1)
        assert entry["classified_as"].get(name, 0.0) == pytest.approx(entry["accuracy"])
    assert main(["sample", str(out), "--class", "Sandals", "--out", str(tmp_path / "x.png")]) == 2
    assert "'Sandals' is not one of this model's classes" in capsys.readouterr().err


@requires_fashion_mnist
def test_conditional_hvae_and_ddpm_runs_write_class_conditional_folders(tmp_path):
    hvae = _train(HVAEFamily(), tmp_path / "hvae", "--max_train_steps", "2", "--final_importance_samples", "2")
    assert hvae["likelihood"]["given"] == "nothing (null class)" and "bits_per_dim_elbo_given_label" in hvae
    ddpm = _train(DDPMFamily(), tmp_path / "ddpm", "--max_train_steps", "2", "--final_importance_samples", "2")
    assert ddpm["likelihood"]["given"] == "nothing (null class)" and "bits_per_dim_elbo_given_label" in ddpm
    assert not [key for key in ddpm if "_iw" in key]
    index = json.loads((tmp_path / "ddpm" / "model_index.json").read_text())
    assert index["class_names"] == list(FASHION_MNIST_CLASS_NAMES)
    card = (tmp_path / "ddpm" / "README.md").read_text()
    assert "trust_remote_code=True" in card and 'class_labels=["T-shirt/top"] * 8' in card
    assert "stock diffusers `DDPMPipeline`" not in card and "### Class-conditional" in card
    pipeline, family = load_pipeline(str(tmp_path / "ddpm"))
    images = family.sample_images(pipeline, 2, torch.Generator().manual_seed(0), class_labels=["Bag", "Bag"],
                                  scheduler="dpm-solver++", steps=2, guidance_scale=2.0)
    assert len(images) == 2


def test_label_flags_need_class_conditional_and_a_sane_dropout(tmp_path):
    parser = build_parser(VAEFamily())
    for flags, message in ((["--label_dropout", "0.2"], "apply to class-conditional training"),
                           (["--label_column", "kind"], "apply to class-conditional training"),
                           (["--class_conditional", "--label_dropout", "1.0"], r"must be in \[0, 1\)")):
        args = parser.parse_args(["--output_dir", str(tmp_path / "x"), "--preset", "tiny", *flags])
        with pytest.raises(ValueError, match=message):
            train(VAEFamily(), args)
        reset_accelerate_state()


def test_a_labelled_run_on_unlabelled_data_is_refused_by_name(tmp_path):
    rows = datasets.Dataset.from_dict({"image": [PIL.Image.new("L", (8, 8), 10 * i) for i in range(12)]})
    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        rows.to_parquet(str(tmp_path / "data" / f"{split}.parquet"))
    args = build_parser(VAEFamily()).parse_args([
        "--output_dir", str(tmp_path / "out"), "--preset", "tiny", "--dataset", str(tmp_path / "data"),
        "--sample_size", "8", "--report_to", "none", "--class_conditional"])
    with pytest.raises(DataError, match=r"--class_conditional needs class labels in the 'train' split.*declares 0 "
                                        r"class-label column"):
        train(VAEFamily(), args)
    assert not (tmp_path / "out" / "model_index.json").exists()
