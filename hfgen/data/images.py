"""`images_to_uint8` / `images_and_source_shape`: the "image" column of a split as one uint8 tensor
(N, C, sample_size, sample_size), and the images' own `SourceShape` before padding.

A uint8 array column that needs no resizing (Fashion-MNIST from the IDX files) is converted for the whole split at
once (the fast path); anything else goes image by image through PIL: decoding, conversion to 8-bit gray or RGB,
the channel count asked for, then zero padding or resizing to the square.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import torch

from ..models.likelihoods import SourceRegion
from ..progress import progress_bar
from .errors import DataError
from .shapes import SourceShape

RESIZE_MODES = ("auto", "pad", "resize")
GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
COLOR_MODES = ("RGB", "P", "CMYK", "YCbCr")
# Mode with an alpha channel -> the same mode without it.
ALPHA_MODES = {"LA": "L", "RGBA": "RGB", "RGBa": "RGB", "PA": "RGB"}
# Rows decoded per Arrow batch on the per-image path.
DECODE_BATCH_SIZE = 256


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
    """Zero-pad (N, C, H, W) uint8 images evenly to (N, C, sample_size, sample_size), where the models' pipelines
    pad them too (``SourceRegion``)."""
    num_images, num_channels, height, width = images.shape
    region = SourceRegion(sample_size, (height, width))
    padded = np.zeros((num_images, num_channels, sample_size, sample_size), dtype=np.uint8)
    padded[:, :, region.rows, region.columns] = images
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
    region = SourceRegion(sample_size, (height, width))
    padded = np.zeros((sample_size, sample_size, pixels.shape[2]), dtype=np.uint8)
    padded[region.rows, region.columns] = pixels
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
