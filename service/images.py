"""User inputs -> preprocessed NCHW float32 batches.

Inputs are untrusted: image bytes are decoded with a pixel budget checked from the
header *before* any pixel is decoded (a 100 kB PNG can claim 50000 x 50000 pixels),
and every decoder failure becomes an `InputError` naming the input, so one bad file
gives one clear line instead of a Pillow traceback.

Preprocessing follows docs/ARCHITECTURE.md (the torchvision recipe): EXIF rotation,
colour conversion, resize of the shorter side (bilinear), centre crop, scale to
[0, 1], `(x - mean) / std` per channel.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
ORIENTATION = 0x0112  # the EXIF tag


class InputError(ValueError):
    """An input that cannot be classified; the message names the input."""


# -- decoding -------------------------------------------------------------------------


def decode_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully, refusing images larger than `max_pixels`.

    `Image.open` only parses the header, so the size is known before decoding: the
    check costs nothing and stops decompression bombs. Pillow's own bomb guard (its
    global `MAX_IMAGE_PIXELS`) is left alone and turned into an InputError if it fires.
    """
    if not data:
        raise InputError(f"{source}: empty file, not an image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(f"{source}: image too large to decode safely ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # decoders of untrusted data raise many exception types
        raise InputError(f"{source}: not a readable image ({_reason(exc)})") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(
            f"{source}: image is {width} x {height} = {width * height} pixels, more than "
            f"the limit of {max_pixels}; refusing to decode it"
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise InputError(f"{source}: image too large to decode safely ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # truncated data, bad chunks, unsupported variants
        raise InputError(f"{source}: not a readable image ({_reason(exc)})") from exc
    return image


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- preprocessing --------------------------------------------------------------------


def preprocess(image: Image.Image, input_meta: dict[str, Any], source: str = "image") -> np.ndarray:
    """One image -> (C, H, W) float32, following the model's `input` block."""
    c, h, w = (int(s) for s in input_meta["shape"])
    color = input_meta.get("color") or ("RGB" if c == 3 else "L")
    if image.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    image = to_color(image, color, source)
    image = resize_and_crop(image, (h, w), input_meta.get("resize"))
    pixels = np.asarray(image, dtype=np.uint8).reshape(h, w, -1)
    if pixels.shape[2] != c:
        raise InputError(f"{source}: {color} gives {pixels.shape[2]} channels, the model wants {c}")
    table = normalisation_table(tuple(input_meta["mean"]), tuple(input_meta["std"]))
    out = np.empty((c, h, w), np.float32)
    for i in range(c):
        np.take(table[i], pixels[:, :, i], out=out[i])
    return out


@lru_cache(maxsize=64)
def normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(C, 256) float32: `(v / 255 - mean[c]) / std[c]` for every 8-bit value v, by the
    same float32 operations as normalising each pixel would take (so bit-identical),
    looked up per pixel in a quarter of the time."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    table = (v[np.newaxis, :] - mean_[:, np.newaxis]) / std_[:, np.newaxis]
    table.setflags(write=False)
    return table


def to_color(image: Image.Image, color: str, source: str = "image") -> Image.Image:
    """Convert to "RGB" or "L". Transparent pixels are put on white (what a viewer
    shows), 16-bit grey is scaled to 8 bits (Pillow's convert would clip at 255)."""
    try:
        if image.mode in SIXTEEN_BIT_MODES:
            return _sixteen_to_eight(image).convert(color)
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            return _on_white(image).convert(color)
        if image.mode == color:
            return image
        return image.convert(color)
    except (ValueError, OSError) as exc:
        raise InputError(
            f"{source}: cannot convert a {image.mode} image to {color}: {exc}"
        ) from exc


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """0..65535 -> 0..255 with rounding (65535 / 257 = 255 exactly)."""
    values = np.asarray(image, dtype=np.float64)
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight)  # 2-D uint8: mode "L"


def resize_and_crop(image: Image.Image, size: tuple[int, int], resize: int | None) -> Image.Image:
    """Shorter side to `resize` (bilinear), then the centre (H, W) crop; with `resize`
    None, straight to (H, W). Sizes and offsets are rounded as torchvision does.

    Only the crop window is resampled, in two explicit one-axis passes in the order
    Pillow uses for the whole image (see `_vertical_first`), each pass over just the
    rows or columns the next one reads: the filter, scale, tap positions and 8-bit
    intermediate of resizing the whole image and cropping, in about half the time for
    a 4:3 photo. What differs is floating-point rounding of the tap positions (they
    are counted from the window's corner), which can break an exact rounding tie the
    other way: one 8-bit step in at most 0.05% of the values of the test photos, at
    most two steps (one per pass) on noise at simple scale ratios, where ties are
    common. (Pillow's own `box` resize would pick its pass order from the window
    instead, and differ by a step in up to 20% of a photo's values.)
    """
    h, w = size
    bilinear = Image.Resampling.BILINEAR
    if resize is None:
        return image.resize((w, h), bilinear)
    width, height = image.size
    rw, rh = _resized_size(image.size, resize, (h, w))
    left, top = int(round((rw - w) / 2.0)), int(round((rh - h) / 2.0))
    x0, x1 = left * width / rw, (left + w) * width / rw
    y0, y1 = top * height / rh, (top + h) * height / rh
    if _vertical_first((width, height), (rw, rh)):
        c0, c1 = _reach(x0, x1, width / rw, width)
        cols = image if (c0, c1) == (0, width) else image.crop((c0, 0, c1, height))
        tall = cols.resize((c1 - c0, h), bilinear, box=(0, y0, c1 - c0, y1))
        return tall.resize((w, h), bilinear, box=(x0 - c0, 0, x1 - c0, h))
    r0, r1 = _reach(y0, y1, height / rh, height)
    rows = image if (r0, r1) == (0, height) else image.crop((0, r0, width, r1))
    wide = rows.resize((w, r1 - r0), bilinear, box=(x0, 0, x1, r1 - r0))
    return wide.resize((w, h), bilinear, box=(0, y0 - r0, w, y1 - r0))


def _vertical_first(size: tuple[int, int], new: tuple[int, int]) -> bool:
    """The pass order Pillow 13 picks for resizing `size` to `new` (checked against
    it on random geometries in the tests): vertical first when the height shrinks by
    more than twice as many pixels as the width."""
    shrink_x, shrink_y = size[0] - new[0], size[1] - new[1]
    return shrink_y > 0 and shrink_y > 2 * shrink_x


def _reach(start: float, stop: float, scale: float, limit: int) -> tuple[int, int]:
    """The source pixels a bilinear pass reads for the output span [start, stop) in
    source coordinates: the filter reaches max(scale, 1) pixels either side."""
    support = max(scale, 1.0)
    return max(0, math.floor(start - support)), min(limit, math.ceil(stop + support))


def _resized_size(original: tuple[int, int], resize: int, crop: tuple[int, int]) -> tuple[int, int]:
    """Size after resizing the shorter side to `resize`, enlarged if needed so the crop
    always fits (a model whose crop exceeds `resize` still gets a full crop)."""
    ow, oh = original
    ch, cw = crop
    short, long = min(ow, oh), max(ow, oh)
    new_long = int(resize * long / short)
    rw, rh = (resize, new_long) if ow <= oh else (new_long, resize)
    if rw >= cw and rh >= ch:
        return rw, rh
    scale = max(cw / ow, ch / oh)
    return max(cw, math.ceil(ow * scale)), max(ch, math.ceil(oh * scale))


# -- files ----------------------------------------------------------------------------


def load_input(path: str | Path, input_meta: dict[str, Any]) -> np.ndarray:
    """A file -> (N, C, H, W) float32: a `.npy` tensor taken as already preprocessed,
    anything else decoded as an image and preprocessed."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image or .npy file")
    if path.suffix.lower() == ".npy":
        return _load_npy(path, input_meta)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    image = decode_image(data, str(path))
    return preprocess(image, input_meta, str(path))[np.newaxis]


def _load_npy(path: Path, input_meta: dict[str, Any]) -> np.ndarray:
    """A preprocessed tensor: float32, (C, H, W) or (N, C, H, W) matching the model."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, EOFError) as exc:  # pickled objects, truncated or foreign files
        raise InputError(f"{path}: not a readable .npy file ({_reason(exc)})") from exc
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: expected a single array (.npy), got {type(array).__name__}")
    if array.dtype.kind != "f" or array.dtype.itemsize != 4:
        raise InputError(f"{path}: .npy dtype is {array.dtype}, expected float32")
    want = tuple(int(s) for s in input_meta["shape"])
    got = array.shape
    batch = array[np.newaxis] if array.ndim == 3 else array
    if batch.ndim != 4 or batch.shape[1:] != want or batch.shape[0] < 1:
        batched = "(N, " + ", ".join(map(str, want)) + ")"
        raise InputError(f"{path}: .npy shape is {got}, expected {want} or {batched}")
    array = batch
    if not np.isfinite(array).all():
        raise InputError(f"{path}: .npy tensor contains NaN or inf")
    return np.ascontiguousarray(array, dtype=np.float32)
