"""`load_image_dataset`: one split of any source as a datasets.Dataset with an "image" column.

Four kinds of source:

* ``"fashion_mnist"``: the official IDX files, read with numpy from ``$HFGEN_FASHION_MNIST_DIR`` or
  ``/usr/share/datasets/fashion-mnist`` (see `fashion_mnist_dir`); without either, the Hub copy
  ``zalando-datasets/fashion_mnist``.
* a local directory: image files (``datasets``' "imagefolder", optionally with ``train/`` and ``test/``
  subfolders), parquet files, arrow files, or a folder written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk``; also a single ``.parquet`` or ``.arrow`` file.
* anything else: a Hugging Face Hub dataset id.

Each kind gives its split names and a loader for one split; `load_image_dataset` then picks the split (holding
"test" and "validation" out of "train" where the source has none) and names its image column "image".
`public_dataset_name` is how published files name a source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import PIL.Image
import pyarrow as pa
from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError
from datasets.inspect import SplitsNotFoundError

from .errors import DataError
from .fashion_mnist import (FASHION_MNIST, FASHION_MNIST_FILE_PREFIXES, FASHION_MNIST_HUB_ID, fashion_mnist_dir,
                            load_fashion_mnist_idx)

# Splits that may be carved out of a source's "train" split (see `load_image_dataset`).
HELD_OUT_SPLITS = ("test", "validation")
#: images held out of "train" as "validation" when a source has no validation split of its own: its last 5,000
#: (Fashion-MNIST: train[55000:60000]), or a tenth of a smaller training split
VALIDATION_SIZE = 5000


def num_validation_rows(num_train_rows: int) -> int:
    """How many of the last rows of a "train" split form "validation" when the source has no validation split:
    `VALIDATION_SIZE`, or a tenth of a smaller split (at least one row when there are two or more; none of one)."""
    if num_train_rows < 2:
        return 0
    return min(VALIDATION_SIZE, max(1, num_train_rows // 10))


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
