"""Fashion-MNIST: its name, class names and Hub copy, the folder its official IDX files are read from
(`fashion_mnist_dir`), and reading those files into a datasets.Dataset with numpy (`load_fashion_mnist_idx`,
`read_idx_uint8`)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from .errors import DataError

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


# --- the official IDX files -----------------------------------------------------------------------------------


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
