"""The training data as the loop sees it: which images form each micro-batch (a function of the seed and the
step alone, so that a resumed run sees the batches an uninterrupted one would), and a split loaded with its labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..data import DataError, class_labels, images_and_source_shape, load_image_dataset, public_dataset_name


class BatchSchedule:
    """Which training images form micro-batch ``i``: a function of (seed, i) alone, so a resumed run sees
    exactly the batches an uninterrupted one would. Each epoch is a fresh permutation; process ``r`` of ``n``
    takes every n-th image of it; incomplete batches at the end of an epoch are dropped."""

    def __init__(self, num_images: int, batch_size: int, seed: int, process_index: int, num_processes: int):
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.batches_per_epoch = (num_images // num_processes) // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{num_images} training images are too few for {num_processes} process(es) x batch size "
                f"{batch_size}; expected at least {num_processes * batch_size}"
            )
        self._epoch, self._shard = -1, None

    def indices(self, micro_batch: int) -> torch.Tensor:
        epoch, offset = divmod(micro_batch, self.batches_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            perm = torch.randperm(self.num_images, generator=gen)
            self._shard = perm[self.process_index :: self.num_processes]
            self._epoch = epoch
        return self._shard[offset * self.batch_size : (offset + 1) * self.batch_size]


@dataclass
class LoadedSplit:
    """One split as the loop uses it: uint8 images (the first ``max_samples``), their ``SourceShape``, the split's
    size, and with ``--class_conditional`` the images' class indices (int64) and the data's class names."""

    images: torch.Tensor
    source_shape: object
    split_size: int
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None


def load_split(cfg, split: str, channels: int | None, max_samples: int | None, accelerator: Accelerator) -> LoadedSplit:
    with accelerator.main_process_first():
        # The hold-outs (validation, and test of a train-only source) use the data layer's fixed rules, as
        # `hfgen evaluate` does, so that they never overlap the training images whatever --seed is.
        dataset = load_image_dataset(cfg.dataset, split, config_name=cfg.dataset_config_name,
                                     image_column=cfg.image_column)
    images, source_shape = images_and_source_shape(
        dataset, sample_size=cfg.sample_size, channels=channels, resize_mode=cfg.resize_mode,
        convert_channels=cfg.convert_channels, max_samples=max_samples,
        show_progress=accelerator.is_local_main_process, description=f"{split} images",
    )
    loaded = LoadedSplit(images, source_shape, len(dataset))
    if getattr(cfg, "class_conditional", False):
        try:
            loaded.labels, loaded.class_names = class_labels(dataset, cfg.label_column, max_samples=max_samples)
        except DataError as err:
            raise DataError(f"--class_conditional needs class labels in the {split!r} split of "
                            f"{public_dataset_name(cfg.dataset)!r}: {err}") from err
        if len(loaded.class_names) < 2:
            raise DataError(f"--class_conditional needs at least 2 classes; the {split!r} split of "
                            f"{public_dataset_name(cfg.dataset)!r} declares {len(loaded.class_names)}")
    return loaded


def check_same_classes(first: list[str], second: list[str], first_split: str, second_split: str) -> None:
    if first != second:
        raise DataError(f"the {first_split!r} split declares the classes {first} but the {second_split!r} split "
                        f"{second}; expected the same classes in the same order")
