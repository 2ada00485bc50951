"""hfgen.data on real files: the Fashion-MNIST IDX files and small image / parquet / arrow folders made here."""

import gzip
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from hfgen.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST,
    FASHION_MNIST_CLASS_NAMES,
    DataError,
    SourceShape,
    fashion_mnist_dir,
    images_and_source_shape,
    images_to_uint8,
    load_image_dataset,
    num_dimensions,
    read_idx_uint8,
)

IDX_DIR = Path(DEFAULT_FASHION_MNIST_DIR)
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
needs_idx_files = pytest.mark.skipif(
    not all((IDX_DIR / name).is_file() for name in IDX_FILES),
    reason=f"the official Fashion-MNIST IDX files ({', '.join(IDX_FILES)}) are not all in {IDX_DIR}",
)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Keep datasets' cache inside tmp_path, and read Fashion-MNIST from the default folder unless a test says."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HFGEN_FASHION_MNIST_DIR", raising=False)


def _numbered_image(index: int, size=(8, 8), mode="L") -> PIL.Image.Image:
    """A flat image whose pixel value encodes `index`, so rows can be told apart after loading."""
    value = (index * 7) % 256
    color = value if mode == "L" else (value, 255 - value, 3)
    return PIL.Image.new(mode, size, color)


def _pixel_ids(images: torch.Tensor) -> set[int]:
    return {int(image.flatten()[0]) for image in images}


def _make_image_folder(root: Path, counts: dict[str, int], mode="L", size=(8, 8)) -> Path:
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            _numbered_image(index if split != "test" else 100 + index, size, mode).save(root / split / f"{index:03d}.png")
    return root


# --- Fashion-MNIST --------------------------------------------------------------------------------------------


@needs_idx_files
def test_fashion_mnist_splits_are_complete_and_different():
    assert fashion_mnist_dir() == DEFAULT_FASHION_MNIST_DIR
    train = load_image_dataset(FASHION_MNIST, "train")
    test = load_image_dataset(FASHION_MNIST, "test")
    validation = load_image_dataset(FASHION_MNIST, "validation")
    # validation is the last 5,000 of the 60,000 official training images, and "train" leaves them out
    assert (len(train), len(validation), len(test)) == (55000, 5000, 10000)
    assert np.array_equal(np.asarray(validation.with_format("numpy")[:3]["image"]),
                          read_idx_uint8(IDX_DIR / "train-images-idx3-ubyte.gz",
                                         expected_magic=0x00000803)[55000:55003])
    train = datasets.concatenate_datasets([train, validation])  # the official 60,000 again
    assert train.features["image"] == datasets.Array2D((28, 28), "uint8")
    assert train.features["label"].names == list(FASHION_MNIST_CLASS_NAMES)
    for dataset, per_class in ((train, 6000), (test, 1000)):
        assert np.bincount(dataset["label"][:], minlength=10).tolist() == [per_class] * 10
    assert FASHION_MNIST_CLASS_NAMES[train[0]["label"]] == "Ankle boot"  # the well-known first training image
    train_first = np.asarray(train.with_format("numpy")[:10000]["image"])
    test_images = np.asarray(test.with_format("numpy")[:]["image"])
    assert test_images.shape == (10000, 28, 28) and test_images.max() == 255
    assert (train_first != test_images).any(axis=(1, 2)).mean() > 0.99
    with pytest.raises(DataError, match=r"no split 'valid'.*'train', 'test'"):
        load_image_dataset(FASHION_MNIST, "valid")


@needs_idx_files
def test_fashion_mnist_images_are_padded_to_32_with_a_zero_border():
    test = load_image_dataset(FASHION_MNIST, "test")
    images = images_to_uint8(test, sample_size=32, channels=1, show_progress=False)
    assert images.shape == (10000, 1, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    original = torch.from_numpy(np.asarray(test.with_format("numpy")[:]["image"], dtype=np.uint8))
    assert torch.equal(images[:, 0, 2:30, 2:30], original)
    border = images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.sum()) == 0
    first = images_to_uint8(test, sample_size=28, max_samples=5, show_progress=False)
    assert torch.equal(first[:, 0], original[:5])
    rgb = images_to_uint8(test, sample_size=32, channels=3, convert_channels=True, max_samples=3, show_progress=False)
    assert rgb.shape == (3, 3, 32, 32) and torch.equal(rgb[:, 2], images[:3, 0])


@needs_idx_files
def test_fast_path_matches_per_image_path_after_a_row_selection():
    holdout = load_image_dataset(FASHION_MNIST, "test").shuffle(seed=1).select(range(40))
    fast = images_to_uint8(holdout, sample_size=30, show_progress=False)
    as_png = holdout.map(lambda row: {"png": PIL.Image.fromarray(np.asarray(row["image"], dtype=np.uint8))},
                         features=datasets.Features({**holdout.features, "png": datasets.Image()}))
    one_by_one = images_to_uint8(as_png.remove_columns("image").rename_column("png", "image"), sample_size=30,
                                 show_progress=False)
    assert torch.equal(fast, one_by_one)


@needs_idx_files
def test_fashion_mnist_dir_from_environment_is_honoured(tmp_path, monkeypatch):
    copy_dir = tmp_path / "fmnist"
    copy_dir.mkdir()
    shutil.copy(IDX_DIR / "t10k-images-idx3-ubyte.gz", copy_dir)
    with gzip.open(IDX_DIR / "t10k-labels-idx1-ubyte.gz") as labels:  # the uncompressed form is accepted too
        (copy_dir / "t10k-labels-idx1-ubyte").write_bytes(labels.read())
    monkeypatch.setenv("HFGEN_FASHION_MNIST_DIR", str(copy_dir))
    assert fashion_mnist_dir() == str(copy_dir)
    test = load_image_dataset(FASHION_MNIST, "test")
    assert len(test) == 10000 and test["label"][:5] == [9, 2, 1, 1, 6]
    with pytest.raises(DataError, match=re.escape(f"{copy_dir}/train-images-idx3-ubyte")):
        load_image_dataset(FASHION_MNIST, "train")  # only the test files were copied
    monkeypatch.setenv("HFGEN_FASHION_MNIST_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="typo.*does not exist"):
        load_image_dataset(FASHION_MNIST, "test")


@needs_idx_files
def test_corrupt_idx_files_are_named(tmp_path, monkeypatch):
    copy_dir = tmp_path / "fmnist"
    copy_dir.mkdir()
    monkeypatch.setenv("HFGEN_FASHION_MNIST_DIR", str(copy_dir))
    compressed_labels = (IDX_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    with gzip.open(IDX_DIR / "t10k-labels-idx1-ubyte.gz") as labels:
        raw_labels = labels.read()
    shutil.copy(IDX_DIR / "t10k-images-idx3-ubyte.gz", copy_dir)
    labels_gz = copy_dir / "t10k-labels-idx1-ubyte.gz"

    labels_gz.write_bytes(compressed_labels[: len(compressed_labels) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz' could not be read"):
        load_image_dataset(FASHION_MNIST, "test")

    labels_gz.write_bytes(gzip.compress(raw_labels[:-10]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz' is truncated: 9990 data bytes; expected 10000"):
        load_image_dataset(FASHION_MNIST, "test")

    labels_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + raw_labels[4:]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz' has magic number 0x00000803; expected 0x00000801"):
        load_image_dataset(FASHION_MNIST, "test")


# --- local folders --------------------------------------------------------------------------------------------


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    root = _make_image_folder(tmp_path / "pngs", {"train": 5, "test": 3}, mode="RGB", size=(12, 10))
    _numbered_image(50, size=(12, 10), mode="L").save(root / "train" / "gray.png")
    train = load_image_dataset(str(root), "train")
    test = load_image_dataset(str(root), "test")
    validation = load_image_dataset(str(root), "validation")  # no validation/ folder: the last training image
    assert (len(train), len(validation), len(test)) == (5, 1, 3)
    train = datasets.concatenate_datasets([train, validation])
    train_images = images_to_uint8(train, sample_size=16, channels=3, convert_channels=True, show_progress=False)
    test_images = images_to_uint8(test, sample_size=16, show_progress=False)  # channels taken from the first image
    assert train_images.shape == (6, 3, 16, 16) and test_images.shape == (3, 3, 16, 16)
    assert not _pixel_ids(train_images[:, :, 8, 8]) & _pixel_ids(test_images[:, :, 8, 8])
    # 12x10 -> 16x16: 2 columns of zeros on the left and right, 3 rows on top and bottom.
    assert int(train_images[:, :, :3].sum()) == int(train_images[:, :, :, :2].sum()) == 0
    assert (train_images[:5, 1, 3:13, 2:14] > 0).all()
    with pytest.raises(DataError, match=r"has 1 channel\(s\); expected 3 \(pass convert_channels=True"):
        images_to_uint8(train, sample_size=16, channels=3, show_progress=False)
    with pytest.raises(DataError, match=r"no split 'valid'; available splits: '(train', 'test|test', 'train)'"):
        load_image_dataset(str(root), "valid")


def test_parquet_arrow_and_save_to_disk_folders(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    splits = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"image": [_numbered_image(index) for index in range(rows)],
                                          "label": list(range(rows))}, features=features)
        for name, rows in (("train", 4), ("test", 2))
    })

    (tmp_path / "parquet").mkdir()
    for name, split in splits.items():
        split.to_parquet(str(tmp_path / "parquet" / f"{name}.parquet"))
    splits.save_to_disk(str(tmp_path / "saved_dict"))
    splits["test"].save_to_disk(str(tmp_path / "saved_one"))

    # "train" leaves out its last row (a tenth, at least one) as "validation"; a source with one split gives half
    # of it to "test" first
    for source, split, rows in [("parquet", "train", 3), ("parquet", "validation", 1), ("parquet", "test", 2),
                                ("saved_dict", "train", 3), ("saved_dict", "test", 2),
                                ("parquet/test.parquet", "train", 1), ("saved_one", "train", 1),
                                ("saved_one", "test", 1)]:
        dataset = load_image_dataset(str(tmp_path / source), split, test_fraction=0.5)
        assert len(dataset) == rows, (source, split)
        assert "label" in dataset.column_names
        assert images_to_uint8(dataset, sample_size=8, show_progress=False).shape == (rows, 1, 8, 8)

    arrow_dir = tmp_path / "arrow"
    arrow_dir.mkdir()
    shutil.copy(next((tmp_path / "saved_dict" / "train").glob("*.arrow")), arrow_dir / "train.arrow")
    assert len(load_image_dataset(str(arrow_dir), "train", test_fraction=0.25)) == 2  # 4 - 1 test - 1 validation


def test_corrupt_png_is_named(tmp_path):
    root = _make_image_folder(tmp_path / "pngs", {"train": 2, "test": 2})
    (root / "test" / "broken.png").write_bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes())
    test = load_image_dataset(str(root), "test")
    with pytest.raises(DataError, match=r"image '.*test/broken\.png' \(row 2\) could not be decoded \(cannot identify "
                                        r"image file.*expected a readable PNG/JPEG image"):
        images_to_uint8(test, sample_size=8, show_progress=False)
    assert images_to_uint8(test, sample_size=8, max_samples=2, show_progress=False).shape == (2, 1, 8, 8)


def test_channel_conversion_and_alpha(tmp_path):
    rgb_pixels = np.random.default_rng(1).integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    rgb = datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(pixels) for pixels in rgb_pixels]},
                                     features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(DataError, match=r"image row 0 has 3 channel\(s\); expected 1 .*convert_channels=True"):
        images_to_uint8(rgb, sample_size=10, channels=1, show_progress=False)
    gray = images_to_uint8(rgb, sample_size=10, channels=1, convert_channels=True, show_progress=False)
    expected = np.stack([np.asarray(PIL.Image.fromarray(pixels).convert("L")) for pixels in rgb_pixels])
    assert gray.shape == (4, 1, 10, 10) and np.array_equal(gray[:, 0].numpy(), expected)
    as_is = images_to_uint8(rgb, sample_size=10, show_progress=False)
    assert np.array_equal(as_is.permute(0, 2, 3, 1).numpy(), rgb_pixels)

    root = tmp_path / "rgba"
    root.mkdir()
    PIL.Image.new("RGBA", (6, 6), (10, 20, 30, 40)).save(root / "see_through.png")
    rgba = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    with pytest.raises(DataError, match=r"see_through\.png.*has an alpha channel \(mode 'RGBA'\)"):
        images_to_uint8(rgba, sample_size=8, show_progress=False)
    dropped = images_to_uint8(rgba, sample_size=6, convert_channels=True, show_progress=False)
    assert dropped.shape == (1, 3, 6, 6) and dropped[0, :, 0, 0].tolist() == [10, 20, 30]


def test_uint8_rgb_array_column_matches_png_decoding():
    pixels = np.random.default_rng(2).integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    arrays = datasets.Dataset.from_dict({"image": pixels},
                                        features=datasets.Features({"image": datasets.Array3D((5, 7, 3), "uint8")}))
    pngs = datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(image) for image in pixels]},
                                      features=datasets.Features({"image": datasets.Image()}))
    for options in ({}, {"channels": 1, "convert_channels": True}, {"resize_mode": "resize"}):
        from_arrays = images_to_uint8(arrays, sample_size=8, show_progress=False, **options)
        assert torch.equal(from_arrays, images_to_uint8(pngs, sample_size=8, show_progress=False, **options))
    assert torch.equal(images_to_uint8(arrays, sample_size=8, show_progress=False)[:, :, 1:6, 0:7],
                       torch.from_numpy(pixels).permute(0, 3, 1, 2))


def test_numpy_arrays_sixteen_bit_and_palette_images(tmp_path):
    arrays = datasets.Dataset.from_dict({"img": [np.full((5, 7), 9, np.int64), np.full((5, 7), 200, np.int64)]})
    datasets.DatasetDict({"train": arrays, "test": arrays}).save_to_disk(str(tmp_path / "arrays"))
    renamed = load_image_dataset(str(tmp_path / "arrays"), "test")  # the "img" column becomes "image"
    images = images_to_uint8(renamed, sample_size=8, show_progress=False)
    assert images.shape == (2, 1, 8, 8) and images[:, 0, 1:6, 0:7].unique().tolist() == [9, 200]
    sixteen_bit = PIL.Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    palette = PIL.Image.new("P", (3, 1), 1)
    palette.putpalette([9, 9, 9, 0, 128, 255])
    images = images_to_uint8(datasets.Dataset.from_dict({"image": [sixteen_bit]}), sample_size=3, resize_mode="pad",
                             show_progress=False)
    assert images[0, 0, 1].tolist() == [0, 128, 255]
    images = images_to_uint8(datasets.Dataset.from_dict({"image": [palette]}), sample_size=3, show_progress=False)
    assert images.shape == (1, 3, 3, 3) and images[0, :, 1, 0].tolist() == [0, 128, 255]
    with pytest.raises(DataError, match=r"row 0 is a float64 array that is not whole numbers in 0..255"):
        images_to_uint8(datasets.Dataset.from_dict({"image": [np.full((2, 2), 0.5)]}), sample_size=2,
                        show_progress=False)


def test_resize_and_pad_modes():
    wide = PIL.Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)))  # 64 wide, 48 high
    dataset = datasets.Dataset.from_dict({"image": [wide]})
    resized = images_to_uint8(dataset, sample_size=32, show_progress=False)
    assert resized.shape == (1, 1, 32, 32)
    assert torch.equal(resized, images_to_uint8(dataset, sample_size=32, resize_mode="resize", show_progress=False))
    # 64x48 scales to 43x32, then the middle 32 columns are kept: a horizontal ramp without its ends.
    row = resized[0, 0, 16].int()
    assert (row.diff() > 0).all() and 20 < row[0] < 60 and 195 < row[-1] < 235
    with pytest.raises(DataError, match=r"row 0 is 64x48 pixels; resize_mode='pad' expects at most 32x32"):
        images_to_uint8(dataset, sample_size=32, resize_mode="pad", show_progress=False)
    small = datasets.Dataset.from_dict({"image": [PIL.Image.new("L", (5, 3), 77)]})
    padded = images_to_uint8(small, sample_size=8, resize_mode="pad", show_progress=False)[0, 0]
    assert (padded[2:5, 1:6] == 77).all() and int(padded.sum()) == 77 * 15  # odd remainders go bottom/right
    upscaled = images_to_uint8(small, sample_size=8, resize_mode="resize", show_progress=False)
    assert upscaled.shape == (1, 1, 8, 8) and (upscaled == 77).all()
    with pytest.raises(DataError, match="resize_mode='stretch'; expected one of 'auto', 'pad', 'resize'"):
        images_to_uint8(small, sample_size=8, resize_mode="stretch")
    with pytest.raises(DataError, match="channels=4; expected 1"):
        images_to_uint8(small, sample_size=8, channels=4)


# --- splits, columns and paths --------------------------------------------------------------------------------


def test_only_train_is_split_into_disjoint_holdouts(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for index in range(30):
        _numbered_image(index).save(root / f"{index:02d}.png")
    train = load_image_dataset(str(root), "train", test_fraction=0.2, seed=3)
    test = load_image_dataset(str(root), "test", test_fraction=0.2, seed=3)
    validation = load_image_dataset(str(root), "validation", test_fraction=0.2, seed=3)
    assert (len(train), len(validation), len(test)) == (22, 2, 6)  # test 20%, then a tenth of the rest
    train_ids = _pixel_ids(images_to_uint8(train, sample_size=8, show_progress=False))
    test_ids = _pixel_ids(images_to_uint8(test, sample_size=8, show_progress=False))
    validation_ids = _pixel_ids(images_to_uint8(validation, sample_size=8, show_progress=False))
    assert len(train_ids) == 22 and len(test_ids) == 6 and len(validation_ids) == 2
    assert not train_ids & test_ids and not train_ids & validation_ids and not validation_ids & test_ids
    again = load_image_dataset(str(root), "test", test_fraction=0.2, seed=3)
    assert test_ids == _pixel_ids(images_to_uint8(again, sample_size=8, show_progress=False))
    other_seed = load_image_dataset(str(root), "test", test_fraction=0.2, seed=4)
    assert test_ids != _pixel_ids(images_to_uint8(other_seed, sample_size=8, show_progress=False))
    with pytest.raises(DataError, match="test_fraction=1.5; expected a fraction strictly between 0 and 1"):
        load_image_dataset(str(root), "test", test_fraction=1.5)


def test_empty_split_missing_path_and_missing_image_column(tmp_path):
    image_feature = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    one_row = datasets.Dataset.from_dict({"image": [PIL.Image.new("L", (4, 4))], "caption": ["a"]},
                                         features=image_feature)
    empty = datasets.Dataset.from_dict({"image": [], "caption": []}, features=image_feature)
    datasets.DatasetDict({"train": one_row, "test": empty}).save_to_disk(str(tmp_path / "with_empty"))
    with pytest.raises(DataError, match=r"split 'test' of '.*with_empty' is empty \(0 rows\)"):
        load_image_dataset(str(tmp_path / "with_empty"), "test")
    assert len(load_image_dataset(str(tmp_path / "with_empty"), "train")) == 1
    (tmp_path / "parquet_with_empty").mkdir()
    one_row.to_parquet(str(tmp_path / "parquet_with_empty" / "train.parquet"))
    empty.to_parquet(str(tmp_path / "parquet_with_empty" / "test.parquet"))
    with pytest.raises(DataError, match=r"split 'test' of '.*parquet_with_empty' could not be read.*no data"):
        load_image_dataset(str(tmp_path / "parquet_with_empty"), "test")
    assert len(load_image_dataset(str(tmp_path / "parquet_with_empty"), "train")) == 1

    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError, match=re.escape(f"dataset path '{missing}' does not exist")):
        load_image_dataset(str(missing))
    with pytest.raises(DataError, match="dataset path './no_such_relative_folder' does not exist"):
        load_image_dataset("./no_such_relative_folder")

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no image, parquet or arrow files"):
        load_image_dataset(str(tmp_path / "notes"))

    no_images = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"pixels": [[1, 2], [3, 4]], "label": [0, 1]})})
    no_images.save_to_disk(str(tmp_path / "no_images"))
    with pytest.raises(DataError, match=r"has no image column; columns: 'pixels', 'label'"):
        load_image_dataset(str(tmp_path / "no_images"), "train", test_fraction=0.5)
    with pytest.raises(DataError, match=r"image_column 'picture' is not a column .* columns: 'pixels', 'label'"):
        load_image_dataset(str(tmp_path / "no_images"), "train", image_column="picture")
    named = load_image_dataset(str(tmp_path / "no_images"), "train", image_column="pixels")
    assert named.column_names == ["image", "label"]


def test_first_image_feature_column_is_renamed(tmp_path):
    pictures = datasets.Dataset.from_dict(
        {"caption": ["x", "y"], "picture": [PIL.Image.new("L", (4, 4), 5), PIL.Image.new("L", (4, 4), 6)]},
        features=datasets.Features({"caption": datasets.Value("string"), "picture": datasets.Image()}))
    datasets.DatasetDict({"train": pictures, "test": pictures}).save_to_disk(str(tmp_path / "pictures"))
    dataset = load_image_dataset(str(tmp_path / "pictures"), "test")
    assert dataset.column_names == ["caption", "image"]
    assert images_to_uint8(dataset, sample_size=4, show_progress=False)[:, 0, 0, 0].tolist() == [5, 6]


def test_num_dimensions():
    assert num_dimensions(1, 32) == 1024 and num_dimensions(3, 64) == 12288
    with pytest.raises(DataError):
        num_dimensions(0, 32)


# --- source shapes: what bits/dim divide by ---------------------------------------------------------------------


@needs_idx_files
def test_fashion_mnist_source_shape_is_28x28_inside_the_padded_32x32():
    images, shape = images_and_source_shape(load_image_dataset(FASHION_MNIST, "test"), sample_size=32,
                                            max_samples=16, show_progress=False)
    assert images.shape == (16, 1, 32, 32)
    assert shape == SourceShape(1, 28, 28) and shape.num_dims == 784 and shape.is_padded(32)
    assert int(images[:, :, :2].sum()) == int(images[:, :, :, 30:].sum()) == 0  # the 2-pixel zero border


def test_source_shape_of_padded_resized_and_mixed_image_folders(tmp_path):
    small = _make_image_folder(tmp_path / "small", {"train": 3}, mode="RGB", size=(12, 10))
    _, shape = images_and_source_shape(load_image_dataset(str(small), "train"), sample_size=16, show_progress=False)
    assert shape == SourceShape(3, 10, 12) and shape.num_dims == 360  # (C, H, W) before padding
    large = _make_image_folder(tmp_path / "large", {"train": 3}, mode="L", size=(40, 40))
    _, shape = images_and_source_shape(load_image_dataset(str(large), "train"), sample_size=16, show_progress=False)
    assert shape == SourceShape(1, 16, 16) and not shape.is_padded(16)  # resized: counts at the size seen
    mixed = _make_image_folder(tmp_path / "mixed", {"train": 2, "test": 2}, mode="L", size=(40, 40))
    _numbered_image(9, size=(8, 8), mode="L").save(mixed / "test" / "tiny.png")
    _, shape = images_and_source_shape(load_image_dataset(str(mixed), "test"), sample_size=16, show_progress=False)
    assert shape.mixed_sizes and shape.num_dims == 256  # several sizes: the whole square


# --- class labels ---------------------------------------------------------------------------------------------


@needs_idx_files
def test_class_labels_of_fashion_mnist_come_with_their_names():
    from hfgen.data import class_labels

    labels, names = class_labels(load_image_dataset(FASHION_MNIST, "test"), max_samples=100)
    assert names == list(FASHION_MNIST_CLASS_NAMES) and labels.dtype == torch.int64 and labels.shape == (100,)
    assert names[int(labels[0])] == "Ankle boot"  # the well-known first test image


def test_class_labels_of_image_folders_and_parquet_columns(tmp_path):
    from hfgen.data import class_labels

    root = tmp_path / "classes"
    for name, count in (("boot", 2), ("shirt", 3)):
        (root / "train" / name).mkdir(parents=True)
        for index in range(count):
            _numbered_image(index).save(root / "train" / name / f"{index}.png")
    folder = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    labels, names = class_labels(folder)
    assert names == ["boot", "shirt"] and sorted(labels.tolist()) == [0, 0, 1, 1, 1]
    plain = datasets.Dataset.from_dict({"image": [_numbered_image(i) for i in range(3)], "kind": [2, 0, 1],
                                        "note": ["a", "b", "c"]})
    with pytest.raises(DataError, match="declares 0 class-label column.*pass label_column"):
        class_labels(plain)
    labels, names = class_labels(plain, "kind")
    assert labels.tolist() == [2, 0, 1] and names == ["0", "1", "2"]
    with pytest.raises(DataError, match="'note' holds str values; expected integer class indices"):
        class_labels(plain, "note")
    with pytest.raises(DataError, match="'species' is not a column of the data set; columns: 'kind', 'note'"):
        class_labels(plain, "species")


def test_class_labels_declared_in_parquet_and_saved_folders_come_through_the_loader(tmp_path):
    """A parquet file (or save_to_disk folder) written from a data set with a ClassLabel column keeps its class
    names: `load_image_dataset` restores the feature, and `class_labels` finds it without --label_column."""
    from hfgen.data import class_labels

    features = datasets.Features({"image": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog"]),
                                  "score": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict({"image": [_numbered_image(i) for i in range(4)], "kind": [1, 0, 1, 1],
                                       "score": [5, 6, 7, 8]}, features=features)
    (tmp_path / "parquet").mkdir()
    for split in ("train", "test"):
        rows.to_parquet(str(tmp_path / "parquet" / f"{split}.parquet"))
    datasets.DatasetDict(train=rows, test=rows).save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "parquet", tmp_path / "saved"):
        labels, names = class_labels(load_image_dataset(str(source), "test"))
        assert names == ["cat", "dog"] and labels.tolist() == [1, 0, 1, 1], source
    labels, names = class_labels(load_image_dataset(str(tmp_path / "parquet"), "test"), "score")
    # a plain integer column names its classes "0".."max"
    assert names == [str(i) for i in range(9)] and labels.tolist() == [5, 6, 7, 8]
