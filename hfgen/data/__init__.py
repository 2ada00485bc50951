"""Image datasets for hfgen: load one split of a dataset, then turn its images into one uint8 tensor.

Two steps, used by the training loop and the CLI:

    dataset = load_image_dataset("fashion_mnist", "train")          # a datasets.Dataset with an "image" column
    images = images_to_uint8(dataset, sample_size=32, channels=1)   # torch.uint8, shape (N, 1, 32, 32)

Pixel values stay integers in 0..255 all the way: models that need floats convert the tensor themselves.
Every problem a user can fix (a missing file, a corrupt image, a wrong channel count, a missing split) is
raised as `DataError`, with a message that names the offending file, row or value and says what was expected.

The modules, each read top to bottom:

    errors.py         DataError
    shapes.py         num_dimensions (C * H * W) and SourceShape: the pixel values per image that bits/dim divide by
    sources.py        load_image_dataset: "fashion_mnist", a local folder or file, or a Hub id -> one split, with
                      validation (and, for a train-only source, test) held out of train; public_dataset_name
    fashion_mnist.py  Fashion-MNIST's names and classes, fashion_mnist_dir, and its official IDX files read with
                      numpy (load_fashion_mnist_idx, read_idx_uint8)
    labels.py         class_labels: each image's class index and the class names
    images.py         images_to_uint8 / images_and_source_shape: the "image" column -> (N, C, H, W) uint8, all at
                      once for a uint8 array column, else image by image through PIL (decode, 8-bit gray or RGB,
                      channels, pad or resize)

Everything below is importable from ``hfgen.data`` itself.
"""

from __future__ import annotations

from .errors import DataError
from .fashion_mnist import (DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST, FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_DIR_ENV,
                            FASHION_MNIST_HUB_ID, fashion_mnist_dir, load_fashion_mnist_idx, read_idx_uint8)
from .images import images_and_source_shape, images_to_uint8
from .labels import class_labels
from .shapes import SourceShape, num_dimensions
from .sources import LOCAL_DATA_SUFFIX, VALIDATION_SIZE, load_image_dataset, num_validation_rows, public_dataset_name

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_DIR_ENV",
    "FASHION_MNIST_HUB_ID",
    "LOCAL_DATA_SUFFIX",
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
