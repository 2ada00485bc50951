"""`class_labels`: the class label of each image of a split, and the class names, for class-conditional models."""

from __future__ import annotations

import datasets
import torch

from .errors import DataError


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
    missing = sum(value is None for value in values)
    if missing:  # e.g. an imagefolder of train/ and test/ only: its ClassLabel names the splits, its images no class
        raise DataError(f"label_column {label_column!r} has no class for {missing} of {len(values)} images (its "
                        f"declared classes: {', '.join(map(repr, names)) or 'none'}); expected a class for every "
                        f"image: an image folder names its classes by the folders inside each split "
                        f"(train/<class>/<image>), or pass --label_column")
    labels = torch.tensor(values, dtype=torch.int64)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise DataError(f"label_column {label_column!r} holds labels {int(labels.min())}..{int(labels.max())}; "
                        f"expected 0..{len(names) - 1} ({len(names)} classes)")
    return labels, names
