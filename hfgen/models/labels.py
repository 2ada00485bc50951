"""Class labels of a class-conditional model: what a pipeline's ``class_labels`` argument may be, turned into
class indices.

A class-conditional hfgen model is trained on K classes with label dropout, so it holds K + 1 class embeddings:
indices ``0 .. K-1`` are the data's classes (in the order of ``class_names``) and index ``K``, the *null class*,
is the model without a label (it bounds ``log p(x)`` and samples unconditionally). Imports only torch, so that a
published model folder can carry this module as remote code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ClassLabels = int | str | Sequence[int | str] | torch.Tensor | None


def class_label_ids(class_labels: ClassLabels, class_names: Sequence[str] | None, num_classes: int,
                    batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Class indices, shape ``(n,)`` int64, for ``class_labels``:

    * ``None``: the null class ``num_classes`` for each of ``batch_size`` images (unconditional samples);
    * one class, as an index or a name (or a 0-d tensor): that class for each of ``batch_size`` images;
    * a list, tuple or tensor of indices and/or names, nested or not (flattened in order, as diffusers'
      ``DiTPipeline`` takes ``class_labels``: ``[[1], [1]]`` is ``[1, 1]``): one image per label; ``batch_size`` must
      then be 1 (the pipelines' default) or the number of labels.

    A name must be one of ``class_names``; an index must be in ``0 .. num_classes - 1``. A model trained without
    labels (``num_classes == 0``) takes ``None`` only. Every refusal names the value and what was expected.
    """
    if class_labels is None:
        return torch.full((batch_size,), num_classes, dtype=torch.int64, device=device)
    if num_classes <= 0:
        raise ValueError(f"class_labels={_short(class_labels)} was given, but this model was trained without class "
                         f"labels; train it with --class_conditional to sample a given class")
    names = list(class_names or [str(index) for index in range(num_classes)])
    values = _flat_labels(class_labels)
    if values is None:
        raise ValueError(f"class_labels={_short(class_labels)} is a {type(class_labels).__name__}; expected a class "
                         f"index (int), a class name (str), or a list or tensor of them")
    if isinstance(class_labels, (int, str)) or getattr(class_labels, "ndim", None) == 0:
        values = values * batch_size
    else:
        if not values:
            raise ValueError("class_labels is an empty list; expected at least one class index or name")
        if batch_size not in (1, len(values)):
            raise ValueError(f"class_labels holds {len(values)} labels but batch_size is {batch_size}; pass one label "
                             f"per image (batch_size left at 1 or equal to the number of labels), or one label for all")
    ids = [_class_index(value, names, num_classes) for value in values]
    return torch.tensor(ids, dtype=torch.int64, device=device)


def _flat_labels(class_labels) -> list | None:
    """The labels of ``class_labels`` in order, nested lists, tuples and tensors (or numpy arrays) flattened; None
    for a value of any other type. The labels themselves are checked by ``_class_index``."""
    if isinstance(class_labels, (int, str)):
        return [class_labels]
    if isinstance(class_labels, torch.Tensor) or hasattr(class_labels, "tolist") and hasattr(class_labels, "ndim"):
        class_labels = class_labels.tolist()  # a 0-d tensor gives its number, any other a nested list
        return [class_labels] if not isinstance(class_labels, list) else _flat_labels(class_labels)
    if isinstance(class_labels, (list, tuple)):
        flat = []
        for value in class_labels:
            nested = isinstance(value, (list, tuple, torch.Tensor)) or (
                hasattr(value, "tolist") and hasattr(value, "ndim"))
            flat.extend(_flat_labels(value) if nested else [value])
        return flat
    return None


def _class_index(value, names: list[str], num_classes: int) -> int:
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        folded = [name.casefold() for name in names]
        if value.casefold() in folded and folded.count(value.casefold()) == 1:
            return folded.index(value.casefold())
        raise ValueError(f"class {value!r} is not one of this model's classes; expected one of "
                         f"{', '.join(map(repr, names))} (or an index 0..{num_classes - 1})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"class label {value!r} is a {type(value).__name__}; expected a class index (int) or a "
                         f"class name (str)")
    if not 0 <= value < num_classes:
        raise ValueError(f"class index {value} is out of range; this model has {num_classes} classes "
                         f"(0..{num_classes - 1}: {', '.join(map(repr, names))})")
    return value


def _short(value) -> str:
    text = repr(value.tolist() if isinstance(value, torch.Tensor) else value)
    return text if len(text) <= 60 else text[:57] + "..."
