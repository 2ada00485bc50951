"""Image datasets for hfgen: load one split of a dataset, then turn its images into one uint8 tensor.

Two steps, used by the training loop and the CLI:

    dataset = load_image_dataset("fashion_mnist", "train")          # a datasets.Dataset with an "image" column
    images = images_to_uint8(dataset, sample_size=32, channels=1)   # torch.uint8, shape (N, 1, 32, 32)

`load_image_dataset` understands four kinds of source:

* ``"fashion_mnist"``: the official IDX files, read with numpy from ``$HFGEN_FASHION_MNIST_DIR`` or
  ``/usr/share/datasets/fashion-mnist`` (see `fashion_mnist_dir`); without either, the Hub copy
  ``zalando-datasets/fashion_mnist``.
* a local directory: image files (``datasets``' "imagefolder", optionally with ``train/`` and ``test/``
  subfolders), parquet files, arrow files, or a folder written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk``; also a single ``.parquet`` or ``.arrow`` file.
* anything else: a Hugging Face Hub dataset id.

Pixel values stay integers in 0..255 all the way: models that need floats convert the tensor themselves.
Every problem a user can fix (a missing file, a corrupt image, a wrong channel count, a missing split) is
raised as `DataError`, with a message that names the offending file, row or value and says what was expected.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import torch
from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError
from datasets.inspect import SplitsNotFoundError
from .progress import progress_bar

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_HUB_ID",
    "DataError",
    "SourceShape",
    "VALIDATION_SIZE",
    "class_labels",
    "fashion_mnist_dir",
    "images_and_source_shape",
    "images_to_uint8",
    "load_fashion_mnist_idx",
    "load_image_dataset",
    "num_dimensions",
    "num_validation_rows",
    "public_dataset_name",
    "read_idx_uint8",
]


class DataError(ValueError):
    """A dataset or image that cannot be used as given; the message names it and says what was expected."""


FASHION_MNIST = "fashion_mnist"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_DIR_ENV = "HFGEN_FASHION_MNIST_DIR"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Split name -> file name prefix of the official IDX files ("t10k-images-idx3-ubyte.gz" holds the test images).
FASHION_MNIST_FILE_PREFIXES = {"train": "train", "test": "t10k"}
# IDX magic numbers: two zero bytes, data type 0x08 (unsigned byte), number of dimensions.
IDX_MAGIC_UINT8_IMAGES = 0x00000803
IDX_MAGIC_UINT8_LABELS = 0x00000801

# Splits that may be carved out of a source's "train" split (see `load_image_dataset`).
HELD_OUT_SPLITS = ("test", "validation")
#: images held out of "train" as "validation" when a source has no validation split of its own: its last 5,000
#: (Fashion-MNIST: train[55000:60000]), or a tenth of a smaller training split
VALIDATION_SIZE = 5000
RESIZE_MODES = ("auto", "pad", "resize")
GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
COLOR_MODES = ("RGB", "P", "CMYK", "YCbCr")
# Mode with an alpha channel -> the same mode without it.
ALPHA_MODES = {"LA": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}
# Rows decoded per Arrow batch on the per-image path.
DECODE_BATCH_SIZE = 256


# --------------------------------------------------------------------------------------------------------------
# Small helpers used by the training core
# --------------------------------------------------------------------------------------------------------------


def num_dimensions(channels: int, sample_size: int) -> int:
    """The number of pixel values per image, C * H * W: the D that turns nats per image into bits/dim."""
    if channels < 1 or sample_size < 1:
        raise DataError(f"channels={channels} and sample_size={sample_size}; expected both to be positive integers")
    return channels * sample_size * sample_size


def num_validation_rows(num_train_rows: int) -> int:
    """How many of the last rows of a "train" split form "validation" when the source has no validation split:
    `VALIDATION_SIZE`, or a tenth of a smaller split (at least one row when there are two or more; none of one)."""
    if num_train_rows < 2:
        return 0
    return min(VALIDATION_SIZE, max(1, num_train_rows // 10))


@dataclass(frozen=True)
class SourceShape:
    """``(channels, height, width)`` of a split's own images before zero padding: the dimensions that bits/dim
    divide by (784 for Fashion-MNIST's 28x28 images, though models see them padded to 32x32). Images that were
    resized count at the size the model sees; a split whose images come in several sizes counts the whole square
    (``mixed_sizes``), since no one size describes it."""

    channels: int
    height: int
    width: int
    mixed_sizes: bool = False

    @property
    def num_dims(self) -> int:
        return self.channels * self.height * self.width

    def is_padded(self, sample_size: int) -> bool:
        """Whether the model's ``sample_size`` square adds a zero border around these images."""
        return (self.height, self.width) != (sample_size, sample_size)

    def as_list(self) -> list[int]:
        return [self.channels, self.height, self.width]


def fashion_mnist_dir() -> str | None:
    """The folder `load_image_dataset("fashion_mnist")` reads the IDX files from, or None for the Hub copy.

    ``$HFGEN_FASHION_MNIST_DIR`` when set and non-empty (returned even if it does not exist, so that a typo is
    reported instead of silently downloading), else `DEFAULT_FASHION_MNIST_DIR` when that folder exists.
    """
    from_environment = os.environ.get(FASHION_MNIST_DIR_ENV, "").strip()
    if from_environment:
        return os.path.expanduser(from_environment)
    if os.path.isdir(DEFAULT_FASHION_MNIST_DIR):
        return DEFAULT_FASHION_MNIST_DIR
    return None


# --------------------------------------------------------------------------------------------------------------
# load_image_dataset
# --------------------------------------------------------------------------------------------------------------


def load_image_dataset(
    source: str,
    split: str = "train",
    *,
    config_name: str | None = None,
    image_column: str | None = None,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> datasets.Dataset:
    """Return one split of `source` as a datasets.Dataset whose images are in a column named "image"
    (other columns such as "label" kept).

    Args:
        source: ``"fashion_mnist"``, a local path (folder of images / parquet / arrow files, a
            ``save_to_disk`` folder, or one ``.parquet`` / ``.arrow`` file), or a Hub dataset id.
        split: ``"train"``, ``"test"`` or ``"validation"`` (any split name the source has is accepted).
        config_name: the dataset configuration, for Hub datasets that have several.
        image_column: the column holding the images. Default: "image", else "img", else the first column
            with a `datasets.Image` feature. It is renamed to "image" (an existing, different "image"
            column is dropped).
        test_fraction: the fraction (0 < f < 1) of rows held out when the source has only a "train" split.
        seed: seeds that hold-out split.

    Splits are never mixed. When the source has only a "train" split, a seeded, deterministic
    ``train_test_split(test_size=test_fraction, seed=seed)`` carves "test" out of it. When the source has no
    "validation" split, "validation" is the last `num_validation_rows` rows of what remains of "train" (Fashion-MNIST:
    its last 5,000 training images), and "train" is the rows before them: train, validation and test never
    overlap, and models are picked on validation, never on test.

    Raises:
        DataError: the path does not exist or holds no usable files, an IDX file is corrupt, the split does
            not exist (the message lists the available ones) or is empty, or no image column is found.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r}; expected a fraction strictly between 0 and 1")

    split_names, load_split = _split_loader(source, config_name)
    dataset = _select_split(source, split, split_names, load_split, test_fraction=test_fraction, seed=seed)
    if len(dataset) == 0:
        raise DataError(_empty_split_message(source, split))
    return _rename_image_column(dataset, image_column, source=source, split=split)


SplitLoader = Callable[[str], datasets.Dataset]


def _split_loader(source: str, config_name: str | None) -> tuple[list[str], SplitLoader]:
    """The split names of `source` and a function that loads one of them."""
    if source == FASHION_MNIST:
        idx_dir = fashion_mnist_dir()
        if idx_dir is not None:
            return list(FASHION_MNIST_FILE_PREFIXES), lambda name: load_fashion_mnist_idx(idx_dir, name)
        return _hub_split_loader(FASHION_MNIST_HUB_ID, config_name)
    if _looks_like_path(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"dataset path {source!r} does not exist; expected a folder of images, parquet or "
                            "arrow files, a save_to_disk folder, or a .parquet/.arrow file")
        return _local_split_loader(path)
    return _hub_split_loader(source, config_name)


#: how published files mark a data set that was a local folder or file (its name, never its path)
LOCAL_DATA_SUFFIX = " (local data)"


def public_dataset_name(source: str) -> str:
    """How files that get published (card, ``metrics.json``, ``training_config.json``) name a training source:
    ``fashion_mnist`` and Hub ids as given; a local folder or file by its own name plus `LOCAL_DATA_SUFFIX`, so that
    no absolute path of the user's machine ends up on the Hub."""
    if source == FASHION_MNIST or source.endswith(LOCAL_DATA_SUFFIX) or not _looks_like_path(source):
        return source
    name = Path(os.path.expanduser(source)).resolve().name or "data"
    return name + LOCAL_DATA_SUFFIX


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.exists(source)


def _select_split(
    source: str, split: str, split_names: Sequence[str], load_split: SplitLoader, *, test_fraction: float, seed: int,
) -> datasets.Dataset:
    """Load `split`, carving "test" out of "train" when "train" is the source's only split, and "validation" out
    of the end of "train" when the source has no validation split (which "train" then leaves out)."""
    names = list(split_names)
    carves_validation = "train" in names and "validation" not in names
    if split in names and not (split == "train" and carves_validation):
        return load_split(split)
    if "train" not in names or split not in ("train", *HELD_OUT_SPLITS) or (split == "test" and names != ["train"]):
        raise DataError(f"{source!r} has no split {split!r}; available splits: {', '.join(map(repr, names))}")
    train = load_split("train")
    if names == ["train"]:
        if len(train) < 2:
            raise DataError(f"{source!r} has only a 'train' split with {len(train)} row(s); expected at least "
                            f"2 rows to hold out a {test_fraction:g} fraction as 'test'")
        parts = train.train_test_split(test_size=test_fraction, seed=seed, shuffle=True)
        if split == "test":
            return parts["test"]
        train = parts["train"]
    held_out = num_validation_rows(len(train))
    if split == "validation":
        if held_out == 0:
            raise DataError(f"{source!r} has {len(train)} training row(s) and no 'validation' split; expected at "
                            f"least 2 training rows to hold out the last as 'validation'")
        return train.select(range(len(train) - held_out, len(train)))
    return train.select(range(len(train) - held_out)) if held_out else train


def _rename_image_column(
    dataset: datasets.Dataset, image_column: str | None, *, source: str, split: str,
) -> datasets.Dataset:
    """Find the image column (see `load_image_dataset`) and name it "image"."""
    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise DataError(f"image_column {image_column!r} is not a column of split {split!r} of {source!r}; "
                            f"columns: {', '.join(map(repr, columns))}")
        chosen = image_column
    elif "image" in columns:
        chosen = "image"
    elif "img" in columns:
        chosen = "img"
    else:
        image_features = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
        if not image_features:
            raise DataError(f"split {split!r} of {source!r} has no image column; columns: "
                            f"{', '.join(map(repr, columns))}; expected a column named 'image' or 'img', one with "
                            "a datasets.Image feature, or pass image_column")
        chosen = image_features[0]
    if chosen == "image":
        return dataset
    if "image" in columns:
        dataset = dataset.remove_columns("image")
    return dataset.rename_column(chosen, "image")


# --- class labels ---------------------------------------------------------------------------------------------


def class_labels(dataset: datasets.Dataset, label_column: str | None = None, *,
                 max_samples: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The class label of each image (the first ``max_samples``) as an int64 tensor, and the class names.

    ``label_column`` names the column; by default the one column with a ``datasets.ClassLabel`` feature (the
    Fashion-MNIST IDX files, an imagefolder's class folders, a Hub data set that declares its classes). A column of
    plain integers 0..K-1 is taken when named (class names are then ``"0"`` .. ``"K-1"``); strings are not."""
    columns = [name for name in dataset.column_names if name != "image"]
    if label_column is None:
        declared = [name for name in columns if isinstance(dataset.features[name], datasets.ClassLabel)]
        if len(declared) != 1:
            raise DataError(f"the data set declares {len(declared)} class-label column(s) ({', '.join(declared) or 'none'}"
                            f"); columns: {', '.join(map(repr, columns)) or 'none'}; expected exactly one, or pass "
                            f"label_column (--label_column) to name it")
        label_column = declared[0]
    if label_column not in columns:
        raise DataError(f"label_column {label_column!r} is not a column of the data set; columns: "
                        f"{', '.join(map(repr, columns)) or 'none'}")
    num_rows = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    values = dataset.select(range(num_rows))[label_column] if num_rows < len(dataset) else dataset[label_column]
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
    else:
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            raise DataError(f"label_column {label_column!r} holds {type(values[0]).__name__} values; expected "
                            f"integer class indices 0..K-1 or a datasets.ClassLabel column")
        names = [str(index) for index in range(max(values) + 1 if values else 0)]
    labels = torch.tensor(values, dtype=torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise DataError(f"label_column {label_column!r} holds labels {int(labels.min())}..{int(labels.max())}; "
                        f"expected 0..{len(names) - 1} ({len(names)} classes)")
    return labels, names


# --- Fashion-MNIST from the official IDX files ----------------------------------------------------------------


def load_fashion_mnist_idx(directory: str | os.PathLike, split: str) -> datasets.Dataset:
    """One split ("train": 60000 rows, "test": 10000 rows) of Fashion-MNIST from its official IDX files.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without ``.gz`` from `directory`. The
    "image" column is an ``Array2D((28, 28), "uint8")`` feature (pixels 0..255, 0 = background) built without a
    per-row Python loop, and "label" a ClassLabel with `FASHION_MNIST_CLASS_NAMES`.
    """
    if split not in FASHION_MNIST_FILE_PREFIXES:
        raise DataError(f"Fashion-MNIST has no split {split!r}; available splits: "
                        f"{', '.join(map(repr, FASHION_MNIST_FILE_PREFIXES))}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST folder {str(directory)!r} does not exist; expected a folder holding the "
                        f"official IDX files (set ${FASHION_MNIST_DIR_ENV} to it, or unset it to use the Hub copy)")
    prefix = FASHION_MNIST_FILE_PREFIXES[split]
    images_path = _find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx_uint8(images_path, expected_magic=IDX_MAGIC_UINT8_IMAGES)
    labels = read_idx_uint8(labels_path, expected_magic=IDX_MAGIC_UINT8_LABELS)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "expected one label per image")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASS_NAMES):
        raise DataError(f"{labels_path} holds label {int(labels.max())}; expected labels 0.."
                        f"{len(FASHION_MNIST_CLASS_NAMES) - 1}")
    return _uint8_image_dataset(images, labels, class_names=FASHION_MNIST_CLASS_NAMES, split=split)


def _find_idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {str(directory / stem)!r}(.gz) not found; expected the official IDX files "
                    f"in {str(directory)!r} (set ${FASHION_MNIST_DIR_ENV} to the folder that holds them)")


def read_idx_uint8(path: str | os.PathLike, *, expected_magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed when the name ends in ``.gz``) into a numpy array.

    IDX layout: a big-endian uint32 magic number (0x0000 08 ndim), ndim big-endian uint32 sizes, then the
    values in C order. A wrong magic number or a data length other than the product of the sizes raises
    DataError naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as compressed:
                raw = compressed.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"IDX file {str(path)!r} could not be read ({err}); expected a complete "
                        "gzip-compressed (.gz) or uncompressed IDX file") from err
    if len(raw) < 4:
        raise DataError(f"IDX file {str(path)!r} is truncated ({len(raw)} bytes); expected at least a 4-byte header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(f"IDX file {str(path)!r} has magic number 0x{magic:08x}; expected 0x{expected_magic:08x}")
    num_dims = raw[3]
    header_bytes = 4 + 4 * num_dims
    if len(raw) < header_bytes:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header ({len(raw)} bytes); expected "
                        f"{header_bytes} header bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(num_dims))
    expected_values = math.prod(shape)
    actual_values = len(raw) - header_bytes
    if actual_values != expected_values:
        problem = "truncated" if actual_values < expected_values else "longer than its header says"
        raise DataError(f"IDX file {str(path)!r} is {problem}: {actual_values} data bytes; expected "
                        f"{expected_values} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _uint8_image_dataset(
    images: np.ndarray, labels: np.ndarray, *, class_names: Sequence[str], split: str,
) -> datasets.Dataset:
    """A Dataset with an ``Array2D((H, W), "uint8")`` "image" column and a ClassLabel "label" column.

    The Arrow storage of Array2D is a list of rows, each a list of pixels; it is assembled from offsets over
    the flat pixel buffer, which is much faster than letting ``Dataset.from_dict`` walk a 3-d numpy array.
    """
    num_images, height, width = images.shape
    if images.size >= 2**31:
        raise DataError(f"{num_images} images of {height}x{width} pixels are too many for one Arrow list column; "
                        "expected fewer than 2**31 pixels in one split")
    pixels = pa.array(np.ascontiguousarray(images).reshape(-1))
    rows = pa.ListArray.from_arrays(np.arange(0, images.size + 1, width, dtype=np.int32), pixels)
    per_image = pa.ListArray.from_arrays(np.arange(0, num_images * height + 1, height, dtype=np.int32), rows)
    features = datasets.Features({
        "image": datasets.Array2D(shape=(height, width), dtype="uint8"),
        "label": datasets.ClassLabel(names=list(class_names)),
    })
    return datasets.Dataset.from_dict(
        {"image": per_image, "label": pa.array(labels.astype(np.int64))},
        features=features, split=datasets.NamedSplit(split),
    )


# --- local folders and files ----------------------------------------------------------------------------------


def _local_split_loader(path: Path) -> tuple[list[str], SplitLoader]:
    """Split names of a local dataset folder or file, and a loader for one split."""
    if path.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"dataset path {str(path)!r} is a file; expected a folder, or a .parquet/.arrow file")
        return _packaged_split_loader(builder, path, data_files=str(path))
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one saved Dataset per split folder
        split_names = _saved_split_names(path)
        return split_names, lambda name: _load_saved_dataset(path / name, source=path, split=name)
    if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():  # Dataset.save_to_disk
        saved = _load_saved_dataset(path, source=path, split="train")
        split_name = str(saved.split) if saved.split else "train"
        return [split_name], lambda name: saved
    suffixes = {file.suffix.lower() for file in path.rglob("*") if file.is_file()}
    if ".parquet" in suffixes:
        return _packaged_split_loader("parquet", path, data_dir=str(path))
    if ".arrow" in suffixes:
        return _packaged_split_loader("arrow", path, data_dir=str(path))
    if suffixes & _image_file_suffixes():
        return _packaged_split_loader("imagefolder", path, data_dir=str(path))
    raise DataError(f"folder {str(path)!r} holds no image, parquet or arrow files; expected image files "
                    "(optionally in train/ and test/ subfolders), parquet or arrow files, or a save_to_disk folder")


def _saved_split_names(path: Path) -> list[str]:
    """The split names listed in the ``dataset_dict.json`` that DatasetDict.save_to_disk writes."""
    try:
        split_names = json.loads((path / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{str(path / 'dataset_dict.json')!r} could not be read ({err!r}); expected the JSON file "
                        "that DatasetDict.save_to_disk writes, with a 'splits' list") from err
    return [str(name) for name in split_names]


def _load_saved_dataset(folder: Path, *, source: Path, split: str) -> datasets.Dataset:
    """``load_from_disk`` for one saved Dataset. A saved empty Dataset has no .arrow file, which
    ``load_from_disk`` cannot load, so it is reported as an empty split here."""
    if folder.is_dir() and not any(folder.glob("*.arrow")):
        raise DataError(_empty_split_message(str(source), split))
    try:
        return datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:
        raise DataError(f"{str(folder)!r} could not be loaded ({err}); expected a folder written by "
                        "Dataset.save_to_disk or DatasetDict.save_to_disk") from err


def _image_file_suffixes() -> set[str]:
    """File name suffixes that PIL can open (".png", ".jpg", ...)."""
    return {suffix.lower() for suffix, image_format in PIL.Image.registered_extensions().items()
            if image_format in PIL.Image.OPEN}


def _packaged_split_loader(builder: str, path: Path, **data_location: str) -> tuple[list[str], SplitLoader]:
    """Split names and a one-split loader for datasets' "parquet", "arrow" or "imagefolder" builder.

    Splits are loaded one at a time, so that an empty or broken split does not stop the others loading.
    """
    split_names = list(datasets.get_dataset_split_names(builder, **data_location))

    def load_split(name: str) -> datasets.Dataset:
        try:
            return datasets.load_dataset(builder, split=name, **data_location)
        except (DatasetGenerationError, DataFilesNotFoundError, pa.ArrowException, ValueError) as err:
            raise DataError(f"split {name!r} of {str(path)!r} could not be read as {builder} data ({err}); expected "
                            f"a non-empty split of readable {builder} files") from err

    return split_names, load_split


def _empty_split_message(source: str, split: str) -> str:
    return f"split {split!r} of {source!r} is empty (0 rows); expected at least one image"


# --- the Hugging Face Hub -------------------------------------------------------------------------------------


def _hub_split_loader(dataset_id: str, config_name: str | None) -> tuple[list[str], SplitLoader]:
    """Split names of a Hub dataset, and a loader that downloads only the split asked for (all splits when the
    repository does not declare its split names)."""
    hub_errors = (DatasetNotFoundError, DataFilesNotFoundError, FileNotFoundError, ConnectionError)

    def not_loaded(err: Exception) -> DataError:
        return DataError(f"could not load dataset {dataset_id!r} (config {config_name!r}) from the Hugging Face Hub "
                         f"({err}); expected 'fashion_mnist', an existing local path, or the id (owner/name) of a "
                         "Hub dataset that can be reached")

    try:
        split_names = list(datasets.get_dataset_split_names(dataset_id, config_name))
    except SplitsNotFoundError:
        try:
            all_splits = datasets.load_dataset(dataset_id, config_name)
        except hub_errors as err:
            raise not_loaded(err) from err
        return list(all_splits), lambda name: all_splits[name]
    except hub_errors as err:
        raise not_loaded(err) from err

    def load_split(name: str) -> datasets.Dataset:
        try:
            return datasets.load_dataset(dataset_id, config_name, split=name)
        except hub_errors as err:
            raise not_loaded(err) from err

    return split_names, load_split


# --------------------------------------------------------------------------------------------------------------
# images_to_uint8
# --------------------------------------------------------------------------------------------------------------


def images_to_uint8(dataset: datasets.Dataset, *, sample_size: int, **options: Any) -> torch.Tensor:
    """The images of `images_and_source_shape` alone: one uint8 tensor of shape (N, C, sample_size, sample_size)."""
    return images_and_source_shape(dataset, sample_size=sample_size, **options)[0]


def images_and_source_shape(
    dataset: datasets.Dataset,
    *,
    sample_size: int,
    channels: int | None = None,
    resize_mode: str = "auto",
    convert_channels: bool = False,
    max_samples: int | None = None,
    show_progress: bool = True,
    description: str = "images",
) -> tuple[torch.Tensor, SourceShape]:
    """Decode and preprocess the "image" column into one uint8 tensor of shape (N, C, sample_size, sample_size),
    and the `SourceShape` of the images before padding (what bits/dim divide by).

    Args:
        dataset: a Dataset with an "image" column (as returned by `load_image_dataset`) whose elements are PIL
            images, numpy arrays (H, W) / (H, W, C) of 0..255 values, or undecoded ``{"bytes", "path"}`` dicts.
        sample_size: the side of the square output images, in pixels.
        channels: 1 (grayscale) or 3 (RGB); None takes the channel count of the first image.
        resize_mode: "pad" zero-pads images no larger than sample_size evenly on each side (28 -> 32 adds 2
            pixels per side; an odd remainder goes to the bottom/right) and rejects larger ones; "resize" scales
            the shorter side to sample_size (bicubic, antialiased by PIL) and center-crops the longer one;
            "auto" pads each image that fits and resizes the others.
        convert_channels: allow grayscale <-> RGB conversion (ITU-R 601-2 luma for RGB -> L) and dropping an
            alpha channel. Without it, an image with another channel count or with alpha raises DataError.
        max_samples: use only the first `max_samples` rows.
        show_progress: show a tqdm bar while decoding image by image.
        description: the progress bar's label.

    Returns:
        A contiguous CPU tensor of dtype uint8 (pixel values 0..255), shape (N, channels, sample_size, sample_size),
        and the images' own ``(channels, height, width)`` before zero padding (after resizing, if they were).

    Grayscale modes "1", "I;16", "I", "F" become 8-bit: 16-bit values are scaled by 255/65535; "I" values up to
    255 are kept and larger ones (up to 65535) scaled as 16-bit; "F" values in [0, 1] are scaled by 255, values
    in [0, 255] rounded. Palette ("P"), "CMYK" and "YCbCr" images become RGB; a palette image with a
    transparent color counts as having an alpha channel.

    A uint8 ``Array2D`` / ``Array3D`` column of one shape (such as Fashion-MNIST from the IDX files) that
    needs no resizing is converted for the whole split at once, without a per-image loop.
    """
    _check_image_options(sample_size=sample_size, channels=channels, resize_mode=resize_mode, max_samples=max_samples)
    if "image" not in dataset.column_names:
        raise DataError(f"the dataset has no 'image' column (columns: {', '.join(map(repr, dataset.column_names))}); "
                        "expected a dataset returned by load_image_dataset")
    num_rows = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if num_rows == 0:
        raise DataError("the dataset has no rows; expected at least one image")

    whole_split = _uint8_array_column(dataset, num_rows)
    if whole_split is not None and _fits_without_resizing(whole_split.shape[1:3], sample_size, resize_mode):
        channels_first = _channels_last_to_first(whole_split, channels=channels, convert_channels=convert_channels)
        if channels_first is not None:
            return _pad_batch(channels_first, sample_size), SourceShape(*channels_first.shape[1:])
    return _images_to_uint8_one_by_one(
        dataset, num_rows, sample_size=sample_size, channels=channels, resize_mode=resize_mode,
        convert_channels=convert_channels, show_progress=show_progress, description=description,
    )


def _check_image_options(*, sample_size: int, channels: int | None, resize_mode: str, max_samples: int | None) -> None:
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise DataError(f"sample_size={sample_size!r}; expected a positive integer number of pixels")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels={channels!r}; expected 1 (grayscale), 3 (RGB) or None (take the first image's)")
    if resize_mode not in RESIZE_MODES:
        raise DataError(f"resize_mode={resize_mode!r}; expected one of {', '.join(map(repr, RESIZE_MODES))}")
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples={max_samples!r}; expected a positive number of rows or None for all rows")


def _fits_without_resizing(height_width: Sequence[int], sample_size: int, resize_mode: str) -> bool:
    height, width = height_width
    if resize_mode == "resize":
        return height == width == sample_size
    return height <= sample_size and width <= sample_size


# --- fast path: a uint8 array column converted all at once ----------------------------------------------------


def _uint8_array_column(dataset: datasets.Dataset, num_rows: int) -> np.ndarray | None:
    """The first `num_rows` images as one (N, H, W, C) uint8 array, when the "image" column is a fixed-shape
    uint8 Array2D (H, W) or Array3D (H, W, C) feature without missing values; None otherwise.

    Reads the Arrow buffers directly (zero-copy for the usual contiguous table); a row selection made by
    ``select`` / ``train_test_split`` is applied afterwards with one numpy gather.
    """
    feature = dataset.features["image"]
    if not isinstance(feature, (datasets.Array2D, datasets.Array3D)) or feature.dtype != "uint8":
        return None
    shape = tuple(feature.shape)
    if any(size is None for size in shape) or (len(shape) == 3 and shape[2] not in (1, 3)):
        return None
    column = dataset.data.column("image")
    if column.null_count:
        return None
    chunks = []
    for chunk in column.chunks:
        values = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        for _ in shape:  # one list level per array dimension
            values = values.flatten()
        chunks.append(values.to_numpy(zero_copy_only=False))
    pixels = np.concatenate(chunks) if len(chunks) != 1 else chunks[0]
    if pixels.dtype != np.uint8 or pixels.size != len(dataset.data) * math.prod(shape):
        return None
    table_images = pixels.reshape(len(dataset.data), *shape)
    # datasets keeps select/shuffle/train_test_split results as an indices table over the full data table.
    row_selection = getattr(dataset, "_indices", None)
    if row_selection is not None:
        row_ids = row_selection.column(0).to_numpy()[:num_rows]
        images = table_images[row_ids]
    else:
        images = table_images[:num_rows]
    return images if images.ndim == 4 else images[..., None]


def _channels_last_to_first(images: np.ndarray, *, channels: int | None, convert_channels: bool) -> np.ndarray | None:
    """(N, H, W, C) -> (N, channels, H, W), repeating gray into RGB when allowed; None when the per-image path
    must decide (RGB -> gray conversion, or an error message that names the first image)."""
    have = images.shape[-1]
    want = have if channels is None else channels
    if want == have:
        return images.transpose(0, 3, 1, 2)
    if have == 1 and want == 3 and convert_channels:
        return np.repeat(images.transpose(0, 3, 1, 2), 3, axis=1)
    return None


def _pad_batch(images: np.ndarray, sample_size: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) uint8 images evenly to (N, C, sample_size, sample_size)."""
    num_images, num_channels, height, width = images.shape
    top, left = (sample_size - height) // 2, (sample_size - width) // 2
    padded = np.zeros((num_images, num_channels, sample_size, sample_size), dtype=np.uint8)
    padded[:, :, top:top + height, left:left + width] = images
    return torch.from_numpy(padded)


# --- per-image path -------------------------------------------------------------------------------------------


def _images_to_uint8_one_by_one(
    dataset: datasets.Dataset, num_rows: int, *, sample_size: int, channels: int | None, resize_mode: str,
    convert_channels: bool, show_progress: bool, description: str,
) -> tuple[torch.Tensor, SourceShape]:
    output: np.ndarray | None = None  # (N, sample_size, sample_size, C), allocated once the channel count is known
    sizes: set[tuple[int, int]] = set()  # (height, width) of the images before padding
    with progress_bar(total=num_rows, desc=description, unit="img", disable=not show_progress) as progress:
        for row_index, element in enumerate(_iterate_image_elements(dataset, num_rows)):
            image, name = _to_pil_image(element, row_index)
            image = _to_gray_or_rgb(image, name, convert_channels=convert_channels)
            if channels is None:
                channels = 1 if image.mode == "L" else 3
            image = _match_channels(image, name, channels=channels, convert_channels=convert_channels)
            if output is None:
                output = np.zeros((num_rows, sample_size, sample_size, channels), dtype=np.uint8)
            output[row_index], size = _fit_square(image, name, sample_size=sample_size, resize_mode=resize_mode)
            sizes.add(size)
            progress.update(1)
    assert output is not None  # num_rows >= 1
    images = torch.from_numpy(output).permute(0, 3, 1, 2).contiguous()
    if len(sizes) == 1:
        return images, SourceShape(channels, *sizes.pop())
    return images, SourceShape(channels, sample_size, sample_size, mixed_sizes=True)


def _iterate_image_elements(dataset: datasets.Dataset, num_rows: int) -> Iterator[Any]:
    """The first `num_rows` "image" values; Image features come undecoded so that we decode (and report) them."""
    images = dataset.select_columns(["image"])
    if num_rows < len(images):
        images = images.select(range(num_rows))
    feature = images.features["image"]
    if isinstance(feature, datasets.Image):
        images = images.cast_column("image", datasets.Image(decode=False))
    elif isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)):
        images = images.with_format("numpy")
    for batch in images.iter(batch_size=DECODE_BATCH_SIZE):
        yield from batch["image"]


def _to_pil_image(element: Any, row_index: int) -> tuple[PIL.Image.Image, str]:
    """Decode one "image" value; returns the image and a name for messages (its file path, else its row)."""
    row_name = f"row {row_index}"
    if element is None:
        raise DataError(f"image at {row_name} is missing (None); expected an image in every row")
    if isinstance(element, PIL.Image.Image):
        return element, row_name
    if isinstance(element, dict) and ("bytes" in element or "path" in element):
        path, encoded = element.get("path"), element.get("bytes")
        name = f"{path!r} ({row_name})" if path else row_name
        if encoded is None and not path:
            raise DataError(f"image at {row_name} has neither bytes nor a path; expected an encoded image")
        return _decode_image(encoded if encoded is not None else path, name), name
    if isinstance(element, (bytes, bytearray)):
        return _decode_image(bytes(element), row_name), row_name
    if isinstance(element, (str, os.PathLike)):
        name = f"{str(element)!r} ({row_name})"
        return _decode_image(element, name), name
    if isinstance(element, (np.ndarray, list, tuple)):
        return _array_to_pil(np.asarray(element), row_name), row_name
    raise DataError(f"image at {row_name} is a {type(element).__name__}; expected a PIL image, a numpy array, "
                    "encoded image bytes or a {'bytes', 'path'} dict")


def _decode_image(encoded_or_path: bytes | str | os.PathLike, name: str) -> PIL.Image.Image:
    """Open and fully decode an image with PIL, turning PIL's errors into DataError naming the image."""
    try:
        source = io.BytesIO(encoded_or_path) if isinstance(encoded_or_path, bytes) else encoded_or_path
        image = PIL.Image.open(source)
        image.load()  # PIL decodes lazily: force it here so that a truncated file fails now, with its name
        return image
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise DataError(f"image {name} could not be decoded ({err}); expected a readable PNG/JPEG image") from err


def _array_to_pil(pixels: np.ndarray, name: str) -> PIL.Image.Image:
    """A (H, W) or (H, W, C) array of 0..255 values (C = 1, 2, 3, 4) as a PIL image of mode L/LA/RGB/RGBA."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (2, 3, 4))):
        raise DataError(f"image at {name} is an array of shape {pixels.shape}; expected (H, W) or (H, W, C) "
                        "with C in 1..4")
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:
        if not np.issubdtype(pixels.dtype, np.number) or pixels.size == 0 or np.isnan(pixels).any() \
                or pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
            raise DataError(f"image at {name} is a {pixels.dtype} array that is not whole numbers in 0..255; "
                            "expected uint8 pixel values")
        pixels = pixels.astype(np.uint8)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels))


def _to_gray_or_rgb(image: PIL.Image.Image, name: str, *, convert_channels: bool) -> PIL.Image.Image:
    """Bring any supported PIL mode to 8-bit "L" or "RGB" (see `images_to_uint8` for the rules)."""
    mode = image.mode
    transparent_palette = mode == "P" and "transparency" in image.info
    if mode in ALPHA_MODES or transparent_palette:
        if not convert_channels:
            kind = "a transparent palette color" if transparent_palette else "an alpha channel"
            raise DataError(f"image {name} has {kind} (mode {mode!r}); expected an image without transparency, "
                            "or pass convert_channels=True to drop the alpha channel")
        return image.convert("RGBA").convert("RGB") if transparent_palette else image.convert(ALPHA_MODES[mode])
    if mode == "L" or mode == "RGB":
        return image
    if mode in GRAYSCALE_MODES:
        return _grayscale_to_8bit(image, name)
    if mode in COLOR_MODES:
        return image.convert("RGB")
    raise DataError(f"image {name} has unsupported mode {mode!r}; expected a grayscale "
                    f"({', '.join(GRAYSCALE_MODES)}) or color ({', '.join(COLOR_MODES)}) image")


def _grayscale_to_8bit(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    if image.mode == "1":
        return image.convert("L")
    values = np.asarray(image).astype(np.float64)
    lowest, highest = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < highest <= 65535 and lowest >= 0):
        scaled = values * (255.0 / 65535.0)
    elif image.mode == "F" and 0.0 <= lowest and highest <= 1.0:
        scaled = values * 255.0
    elif 0.0 <= lowest and highest <= 255.0:
        scaled = values
    else:
        raise DataError(f"image {name} (mode {image.mode!r}) has pixel values {lowest:g}..{highest:g}; expected "
                        "0..255, 0..65535 (16-bit) or, for floating point, 0..1")
    return PIL.Image.fromarray(np.round(scaled).astype(np.uint8))


def _match_channels(image: PIL.Image.Image, name: str, *, channels: int, convert_channels: bool) -> PIL.Image.Image:
    have = 1 if image.mode == "L" else 3
    if have == channels:
        return image
    if not convert_channels:
        raise DataError(f"image {name} has {have} channel(s); expected {channels} (pass convert_channels=True "
                        "to convert between grayscale and RGB)")
    return image.convert("L" if channels == 1 else "RGB")


def _fit_square(image: PIL.Image.Image, name: str, *, sample_size: int, resize_mode: str
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as a (sample_size, sample_size, C) uint8 array, zero-padded or resized + center-cropped, and its
    (height, width) before padding."""
    width, height = image.size
    fits = width <= sample_size and height <= sample_size
    if resize_mode == "pad" and not fits:
        raise DataError(f"image {name} is {width}x{height} pixels; resize_mode='pad' expects at most "
                        f"{sample_size}x{sample_size} (use resize_mode='resize' or 'auto' to scale it down)")
    if resize_mode == "resize" or not fits:
        image = _resize_and_center_crop(image, sample_size)
        width, height = image.size
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if width == height == sample_size:
        return pixels, (height, width)
    top, left = (sample_size - height) // 2, (sample_size - width) // 2
    padded = np.zeros((sample_size, sample_size, pixels.shape[2]), dtype=np.uint8)
    padded[top:top + height, left:left + width] = pixels
    return padded, (height, width)


def _resize_and_center_crop(image: PIL.Image.Image, sample_size: int) -> PIL.Image.Image:
    """Scale so the shorter side is `sample_size` (bicubic; PIL widens the filter when shrinking, which
    antialiases), then crop the longer side around its center."""
    width, height = image.size
    scale = sample_size / min(width, height)
    new_width = max(sample_size, round(width * scale))
    new_height = max(sample_size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), PIL.Image.Resampling.BICUBIC)
    left, top = (new_width - sample_size) // 2, (new_height - sample_size) // 2
    return image.crop((left, top, left + sample_size, top + sample_size))
