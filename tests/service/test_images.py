"""Image decoding and preprocessing (service/images.py): colour modes, EXIF, geometry,
arithmetic, and every way an input file can be bad."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import service.images as images
from service.images import InputError, decode_image, load_input, preprocess

RGB_META: dict[str, Any] = {
    "shape": [3, 8, 8],
    "layout": "NCHW",
    "color": "RGB",
    "resize": None,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
GREY_META: dict[str, Any] = {
    **RGB_META,
    "shape": [1, 8, 8],
    "color": "L",
    "mean": [0.5],
    "std": [0.25],
}


def meta(**changes: Any) -> dict[str, Any]:
    return {**RGB_META, **changes}


def pixels(x: np.ndarray, m: dict[str, Any] = RGB_META) -> np.ndarray:
    """Undo the normalisation: back to 0..255 pixel values, (C, H, W)."""
    c = len(m["mean"])
    mean = np.asarray(m["mean"]).reshape(c, 1, 1)
    std = np.asarray(m["std"]).reshape(c, 1, 1)
    return (x * std + mean) * 255.0


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)


# -- arithmetic and geometry -----------------------------------------------------------


def test_normalisation_by_hand() -> None:
    """resize None at the model's own size: no resampling, so the arithmetic is exact."""
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    m = meta(shape=[3, 4, 4], mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.125])
    x = preprocess(Image.fromarray(rgb), m)
    assert x.dtype == np.float32 and x.shape == (3, 4, 4) and x.flags.c_contiguous
    for c in range(3):
        for i in range(4):
            for j in range(4):
                want = (rgb[i, j, c] / 255.0 - m["mean"][c]) / m["std"][c]
                assert x[c, i, j] == pytest.approx(want, abs=1e-6)


def test_normalisation_table_is_bit_identical_to_float32_arithmetic() -> None:
    """Every 8-bit value in every channel, against x / 255, - mean, / std in float32 (the
    order datasets.to_model_input uses too)."""
    rgb = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    m = meta(shape=[3, 16, 16], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x = preprocess(Image.fromarray(rgb), m)
    want = rgb.astype(np.float32) / np.float32(255.0)
    want -= np.asarray(m["mean"], np.float32)
    want /= np.asarray(m["std"], np.float32)
    assert np.array_equal(x, want.transpose(2, 0, 1))


def test_resize_none_resizes_straight() -> None:
    x = preprocess(Image.new("RGB", (13, 5), (255, 0, 51)), RGB_META)
    assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(pixels(x)[:, 0, 0], [255, 0, 51], atol=1e-3)
    np.testing.assert_allclose(pixels(x), pixels(x)[:, :1, :1] * np.ones((1, 8, 8)), atol=1e-3)


def test_centre_crop_without_resampling() -> None:
    """6 x 4 image, resize 4: the shorter side is already 4, so only the crop acts and
    must take columns 1..4 (torchvision's rounding of the offset)."""
    columns = np.tile(np.arange(6, dtype=np.uint8) * 40, (4, 1))
    image = Image.fromarray(np.stack([columns] * 3, axis=-1))
    x = preprocess(image, meta(shape=[3, 4, 4], resize=4))
    np.testing.assert_allclose(pixels(x)[0], np.tile([40, 80, 120, 160], (4, 1)), atol=1e-3)


def test_resize_shorter_side_then_crop_matches_pillow() -> None:
    image = noise((40, 30))
    x = preprocess(image, meta(resize=10))
    want = image.resize((13, 10), Image.Resampling.BILINEAR).crop((2, 1, 10, 9))
    # one 8-bit step of rounding is allowed (see the crop-window test below)
    np.testing.assert_allclose(pixels(x), np.asarray(want).transpose(2, 0, 1), atol=1 + 1e-3)


def test_crop_larger_than_resize_still_fills() -> None:
    x = preprocess(noise((20, 30)), meta(shape=[3, 8, 12], resize=8))
    assert x.shape == (3, 8, 12)


def resize_then_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """The plain recipe: resize the whole image, then crop its centre; (C, H, W)."""
    rw, rh = images._resized_size(image.size, resize, (crop, crop))
    left, top = round((rw - crop) / 2), round((rh - crop) / 2)
    full = image.resize((rw, rh), Image.Resampling.BILINEAR)
    return np.asarray(full.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)


def test_pillow_pass_order_rule() -> None:
    """`_vertical_first` predicts the pass order of Pillow's resize: the whole-image
    resize equals the two one-axis resizes in that order (and not in the other)."""
    rng = np.random.default_rng(1)
    bilinear = Image.Resampling.BILINEAR
    checked = 0
    for seed in range(120):
        w, h, nw, nh = (int(v) for v in rng.integers(4, 120, 4))
        image = noise((w, h), seed=seed)
        whole = np.asarray(image.resize((nw, nh), bilinear))
        vh = np.asarray(image.resize((w, nh), bilinear).resize((nw, nh), bilinear))
        hv = np.asarray(image.resize((nw, h), bilinear).resize((nw, nh), bilinear))
        if (vh == hv).all():
            continue  # the order makes no difference here
        checked += 1
        assert (whole == (vh if images._vertical_first((w, h), (nw, nh)) else hv)).all()
    assert checked > 100


@pytest.mark.parametrize("portrait", [False, True])
def test_crop_window_resize_on_photos(portrait: bool) -> None:
    """Resampling only the crop window (what preprocess does) against resizing the
    whole photo and cropping: equal but for a rounding step in a few values."""
    data = pytest.importorskip("skimage.data")
    m = meta(shape=[3, 224, 224], resize=256)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)())
        if portrait:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        diff = np.abs(pixels(preprocess(image, m), m) - resize_then_crop(image, 256, 224))
        assert diff.max() <= 1 + 1e-3, name
        assert (diff > 0.5).mean() <= 0.001, name


def test_crop_window_resize_on_random_geometries() -> None:
    """Noise at random sizes, shrinking and enlarging: at most two 8-bit steps from
    the plain recipe (one per pass), where simple scale ratios make exact rounding
    ties common and the window's tap positions break them the other way."""
    rng = np.random.default_rng(5)
    shares = []
    for seed in range(150):
        w, h = (int(v) for v in rng.integers(8, 300, 2))
        resize = int(rng.integers(4, 200))
        crop = int(rng.integers(2, resize + 1))
        image = noise((w, h), seed=seed)
        m = meta(shape=[3, crop, crop], resize=resize)
        diff = np.abs(pixels(preprocess(image, m), m) - resize_then_crop(image, resize, crop))
        assert diff.max() <= 2 + 1e-3, (w, h, resize, crop)
        shares.append((diff > 0.5).mean())
    assert float(np.mean(shares)) < 0.02


# -- colour modes ---------------------------------------------------------------------


def test_rgb_to_grey_uses_pillow_luma() -> None:
    image = noise((8, 8))
    x = preprocess(image, GREY_META)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(pixels(x, GREY_META)[0], np.asarray(image.convert("L")), atol=1e-3)


def test_grey_to_rgb_replicates() -> None:
    x = pixels(preprocess(noise((8, 8), "L"), RGB_META))
    np.testing.assert_allclose(x[0], x[1])
    np.testing.assert_allclose(x[0], x[2])


def test_rgba_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red
    rgba[:, 4:6] = (0, 0, 0, 0)  # transparent black: shows white
    rgba[:, 6:] = (0, 0, 0, 128)  # half-transparent black: mid grey
    x = pixels(preprocess(Image.fromarray(rgba), RGB_META))
    np.testing.assert_allclose(x[:, 0, 0], [255, 0, 0], atol=1e-3)
    np.testing.assert_allclose(x[:, 0, 4], [255, 255, 255], atol=1e-3)
    np.testing.assert_allclose(x[:, 0, 7], [127, 127, 127], atol=1.01)


def test_la_composited_on_white() -> None:
    la = Image.merge("LA", [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 0)])
    x = pixels(preprocess(la, GREY_META), GREY_META)
    np.testing.assert_allclose(x, 255, atol=1e-3)


def test_palette_transparency_from_png(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 0, 255])
    for y in range(8):
        image.putpixel((0, y), 1)  # first column blue, the rest transparent
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    x = pixels(load_input(path, RGB_META)[0])
    np.testing.assert_allclose(x[:, 3, 0], [0, 0, 255], atol=1e-3)
    np.testing.assert_allclose(x[:, 3, 5], [255, 255, 255], atol=1e-3)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_sixteen_bit_grey_scaled(dtype: type) -> None:
    values = np.array([[0, 257 * 128, 65535, 257]] * 4, dtype=dtype)
    image = Image.fromarray(values)
    assert image.mode == ("I;16" if dtype == np.uint16 else "I")
    m = {**GREY_META, "shape": [1, 4, 4]}
    x = pixels(preprocess(image, m), m)
    np.testing.assert_allclose(x[0, 0], [0, 128, 255, 1], atol=1e-3)


def test_sixteen_bit_png_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
    x = pixels(load_input(path, RGB_META)[0])
    np.testing.assert_allclose(x, 255, atol=1e-3)


def test_cmyk_converted() -> None:
    x = pixels(preprocess(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), RGB_META))
    np.testing.assert_allclose(x[:, 0, 0], [255, 0, 0], atol=1e-3)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    x = pixels(load_input(path, RGB_META)[0])
    np.testing.assert_allclose(x.mean(axis=(1, 2)), [255, 0, 0], atol=8)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    """Orientation 6 means 'rotate 90 degrees clockwise to display': a wide image with
    red on the left becomes a tall one with red on top."""
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = (255, 0, 0)
    rgb[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif.tobytes(), quality=95)
    decoded = decode_image(path.read_bytes(), str(path))
    assert decoded.size == (32, 16)  # stored wide; the tag asks for a rotation
    x = pixels(load_input(path, meta(shape=[3, 32, 16]))[0])
    np.testing.assert_allclose(x[:, :12].mean(axis=(1, 2)), [255, 0, 0], atol=8)
    np.testing.assert_allclose(x[:, 20:].mean(axis=(1, 2)), [0, 0, 255], atol=8)


def test_real_photo(tmp_path: Path) -> None:
    data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(data.astronaut())
    path = tmp_path / "astronaut.png"
    photo.save(path)
    m = meta(shape=[3, 224, 224], resize=256, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x = load_input(path, m)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    want = photo.resize((256, 256), Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
    np.testing.assert_allclose(pixels(x[0], m), np.asarray(want).transpose(2, 0, 1), atol=1e-3)
    jpeg = tmp_path / "astronaut.jpg"
    photo.save(jpeg, quality=90)
    grey = load_input(
        jpeg, {**m, "shape": [1, 224, 224], "color": "L", "mean": [0.5], "std": [0.5]}
    )
    assert grey.shape == (1, 1, 224, 224) and np.isfinite(grey).all()


# -- bad image files ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    data = encode(noise((64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"{path.name}: not a readable image \("):
        load_input(path, RGB_META)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(InputError, match="noise.jpg: not a readable image"):
        load_input(path, RGB_META)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: empty file"):
        load_input(path, RGB_META)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (1-bit grey) but carries no pixel data:
    opening it is free, decoding it would fail, so the size check must come first."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_beyond_pillow_limit() -> None:
    with pytest.raises(InputError, match="bomb.png: .*too large"):
        decode_image(png_header_only(50000, 50000), "bomb.png")


def test_decompression_bomb_beyond_our_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(7000, 7000))  # 49 M pixels: under Pillow's own limit
    with pytest.raises(InputError, match=r"7000 x 7000 = 49000000 pixels, more than the limit"):
        load_input(path, RGB_META)


def test_max_pixels_parameter() -> None:
    data = encode(noise((40, 30)), "PNG")
    assert decode_image(data, "ok.png", max_pixels=1200).size == (40, 30)
    with pytest.raises(InputError, match="ok.png: image is 40 x 30 = 1200 pixels"):
        decode_image(data, "ok.png", max_pixels=1199)


def test_decode_loads_fully() -> None:
    image = decode_image(encode(noise((8, 8)), "PNG"), "x.png")
    assert image.im is not None  # pixels decoded now, not lazily later


# -- .npy inputs ----------------------------------------------------------------------


def test_npy_chw_and_nchw(tmp_path: Path) -> None:
    one = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "many.npy", np.stack([one, one + 1]))
    x = load_input(tmp_path / "one.npy", RGB_META)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], one)
    assert load_input(str(tmp_path / "many.npy"), RGB_META).shape == (2, 3, 8, 8)


def test_npy_big_endian_float32_accepted(tmp_path: Path) -> None:
    np.save(tmp_path / "be.npy", np.ones((3, 8, 8), ">f4"))
    x = load_input(tmp_path / "be.npy", RGB_META)
    assert x.dtype == np.float32 and x.dtype.isnative


def test_npy_wrong_dtype(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((3, 8, 8), np.float64))
    with pytest.raises(InputError, match="d.npy: .npy dtype is float64, expected float32"):
        load_input(tmp_path / "d.npy", RGB_META)


@pytest.mark.parametrize("shape", [(3, 8, 9), (1, 1, 3, 8, 8), (8, 8), (0, 3, 8, 8), (2, 1, 8, 8)])
def test_npy_wrong_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "s.npy", np.zeros(shape, np.float32))
    with pytest.raises(
        InputError, match=rf"s.npy: .npy shape is \({shape[0]}, .*expected \(3, 8, 8\)"
    ):
        load_input(tmp_path / "s.npy", RGB_META)


def test_npy_pickled_object_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy: not a readable .npy file"):
        load_input(tmp_path / "obj.npy", RGB_META)


def test_npy_not_really_npy(tmp_path: Path) -> None:
    (tmp_path / "fake.npy").write_bytes(b"\x89PNG not an array")
    with pytest.raises(InputError, match="fake.npy: not a readable .npy file"):
        load_input(tmp_path / "fake.npy", RGB_META)


def test_npy_non_finite(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.full((3, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match="nan.npy: .npy tensor contains NaN"):
        load_input(tmp_path / "nan.npy", RGB_META)


# -- paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.png", "missing.npy"])
def test_missing_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=f"{name}: cannot read"):
        load_input(tmp_path / name, RGB_META)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        load_input(tmp_path, RGB_META)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(encode(noise((8, 8)), "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="locked.png: cannot read: Permission denied"):
            load_input(path, RGB_META)
    finally:
        path.chmod(0o600)
