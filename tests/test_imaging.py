"""Tests for recordkit.imaging: orientation, modes, im2rec resize/crop, keep rule, bad inputs."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import imagegen
import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from recordkit.errors import RecordkitError
from recordkit.imaging import (
    EncodedImage,
    ImageError,
    ImageOptions,
    _estimate_jpeg_quality,
    probe,
    process_image,
)


def run(path: Path, **kwargs: object) -> tuple[EncodedImage, Image.Image]:
    """process_image on a file; returns the result and its decoded output (loaded)."""
    out = process_image(path.read_bytes(), ImageOptions(**kwargs))  # type: ignore[arg-type]
    img = Image.open(io.BytesIO(out.data))
    img.load()
    assert img.format.lower() == out.format
    assert img.size == (out.width, out.height)
    return out, img


def photo(h: int = 120, w: int = 160) -> np.ndarray:
    """A smooth, photo-like RGB array (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 128 + 90 * np.sin((x + y) / 17.0)
    b = 255.0 * x / (w - 1) * (y / (h - 1))
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def assert_upright(arr: np.ndarray) -> None:
    """Colours of imagegen.upright_pattern: left red, right green on top, blue at the bottom."""
    h, w = arr.shape[:2]
    for (y, x), colour in {
        (h // 4, w // 4): imagegen.RED,
        (3 * h // 4, w // 4): imagegen.RED,
        (h // 4, 3 * w // 4): imagegen.GREEN,
        (3 * h // 4, 3 * w // 4): imagegen.BLUE,
    }.items():
        np.testing.assert_allclose(arr[y, x], colour, atol=12, err_msg=f"pixel {(y, x)}")


# --------------------------------------------------------------------------------------------
# imagegen itself
# --------------------------------------------------------------------------------------------


def test_imagegen_index_round_trip_png_exact_and_jpeg_robust() -> None:
    for i in range(imagegen.MAX_INDEX + 1):
        arr = imagegen.index_pixels(i, 16, 20)
        assert imagegen.decode_index(arr) == i
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=75)
        assert imagegen.decode_index(Image.open(buf).convert("RGB")) == i
    with pytest.raises(ValueError):
        imagegen.index_pixels(imagegen.MAX_INDEX + 1, 8, 8)


def test_imagegen_tree(tmp_path: Path) -> None:
    paths = imagegen.make_tree(tmp_path, classes=2, per_class=3, size=(20, 30), fmt="PNG")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "c0/img_00000.png",
        "c0/img_00001.png",
        "c0/img_00002.png",
        "c1/img_00003.png",
        "c1/img_00004.png",
        "c1/img_00005.png",
    ]
    for i, p in enumerate(paths):
        assert imagegen.decode_index(Image.open(p)) == i


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resize": -1},
        {"quality": 0},
        {"quality": 101},
        {"encoding": ".bmp"},
        {"color": 2},
        {"max_pixels": 0},
        {"encoding": ".png", "quality": -1},
    ],
)
def test_options_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        ImageOptions(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_options_normalise() -> None:
    assert ImageOptions(encoding=".JPEG").encoding == ".jpg"
    assert ImageOptions(encoding=".png").quality == 95  # im2rec default; means level 9
    assert issubclass(ImageError, RecordkitError)


# --------------------------------------------------------------------------------------------
# Orientation and modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    path = imagegen.make_exif_rotated_jpeg(tmp_path / "o.jpg", orientation, h=48, w=64)
    stored = Image.open(path).size
    assert stored == ((48, 64) if orientation >= 5 else (64, 48))
    out, img = run(path)
    assert img.mode == "RGB" and out.channels == 3
    assert img.size == (64, 48)  # upright: wide
    assert out.reencoded == (orientation != 1)
    assert img.getexif().get(0x0112, 1) == 1  # nothing left for a decoder to rotate
    assert_upright(np.asarray(img))


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_with_draft_resize_and_crop(tmp_path: Path, orientation: int) -> None:
    path = imagegen.make_exif_rotated_jpeg(tmp_path / "o.jpg", orientation, h=480, w=640)
    out, img = run(path, resize=120)
    assert img.size == (160, 120)
    assert_upright(np.asarray(img))
    out, img = run(path, resize=60, center_crop=True)
    assert img.size == (60, 60)
    arr = np.asarray(img)  # centre square of the upright picture: columns 80..560 of 640
    np.testing.assert_allclose(arr[30, 10], imagegen.RED, atol=12)
    np.testing.assert_allclose(arr[10, 50], imagegen.GREEN, atol=12)
    np.testing.assert_allclose(arr[50, 50], imagegen.BLUE, atol=12)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    out, img = run(imagegen.make_cmyk_jpeg(tmp_path / "c.jpg"))
    assert img.mode == "RGB" and out.channels == 3 and out.reencoded
    assert_upright(np.asarray(img))


def test_grayscale_jpeg_colour_modes(tmp_path: Path) -> None:
    path = imagegen.make_grayscale_jpeg(tmp_path / "g.jpg")
    out, img = run(path, color=1)
    assert img.mode == "RGB" and out.channels == 3 and out.reencoded
    arr = np.asarray(img).astype(int)
    assert abs(arr[10, 5] - 50).max() <= 3 and abs(arr[10, 60] - 200).max() <= 3
    for color in (0, -1):
        out, img = run(path, color=color)
        assert img.mode == "L" and out.channels == 1
        assert not out.reencoded  # already an 8-bit grey JPEG at q95
    out, img = run(path, color=0, resize=24)
    assert img.mode == "L" and img.size == (32, 24) and out.reencoded


def test_rgb_to_gray_and_unchanged(tmp_path: Path) -> None:
    path = imagegen.write_image(tmp_path / "p.png", imagegen.upright_pattern())
    out, img = run(path, color=0)
    assert img.mode == "L" and out.channels == 1
    red_luma = round(0.299 * 255)
    assert abs(int(np.asarray(img)[24, 5]) - red_luma) <= 2
    out, img = run(path, color=-1)
    assert img.mode == "RGB" and out.channels == 3


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    out, img = run(imagegen.make_png_rgba(tmp_path / "a.png"))
    arr = np.asarray(img)
    assert img.mode == "RGB" and out.channels == 3
    np.testing.assert_allclose(arr[24, 10], imagegen.RED, atol=8)
    np.testing.assert_allclose(arr[24, 50], imagegen.WHITE, atol=8)  # not the hidden blue
    out, img = run(tmp_path / "a.png", color=-1, encoding=".png")
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[24, 50]) == imagegen.WHITE


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(tmp_path: Path, transparent: bool) -> None:
    path = imagegen.make_palette_png(tmp_path / "p.png", transparent=transparent)
    assert Image.open(path).mode == "P"
    out, img = run(path, encoding=".png")
    arr = np.asarray(img)
    assert img.mode == "RGB" and out.channels == 3
    assert tuple(arr[24, 10]) == imagegen.RED
    assert tuple(arr[24, 50]) == (imagegen.WHITE if transparent else imagegen.BLUE)


def test_png16_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = imagegen.make_png16(tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    for color, mode in ((1, "RGB"), (0, "L"), (-1, "L")):
        out, img = run(path, encoding=".png", color=color)
        arr = np.asarray(img)
        assert img.mode == mode
        assert np.all(arr[:, :32] == 64) and np.all(arr[:, 32:] == 192)


def test_png16_rgb_is_8bit(tmp_path: Path) -> None:
    path = imagegen.make_png16_rgb(tmp_path / "rgb16.png")
    out, img = run(path, encoding=".png")
    arr = np.asarray(img).astype(int)
    assert img.mode == "RGB" and arr.dtype == np.int64
    assert np.abs(arr[10, 5] - (64, 128, 192)).max() <= 1
    assert np.abs(arr[10, 60] - (192, 64, 128)).max() <= 1


def test_one_bit_png(tmp_path: Path) -> None:
    bits = Image.new("1", (16, 8), 0)
    bits.paste(1, (8, 0, 16, 8))
    path = tmp_path / "b.png"
    bits.save(path)
    out, img = run(path, encoding=".png", color=-1)
    arr = np.asarray(img)
    assert img.mode == "L" and out.channels == 1
    assert np.all(arr[:, :8] == 0) and np.all(arr[:, 8:] == 255)


def test_float_mode_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ImageError, match="unsupported image mode F"):
        run(path)


# --------------------------------------------------------------------------------------------
# Resize and crop (im2rec semantics)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "opts", "expected"),
    [
        (64, 48, {"resize": 24}, (32, 24)),
        (48, 64, {"resize": 24}, (24, 32)),
        (50, 30, {"resize": 7}, (50 * 7 // 30, 7)),  # integer division, like im2rec
        (30, 50, {"resize": 7}, (7, 50 * 7 // 30)),
        (41, 41, {"resize": 10}, (10, 10)),
        (64, 48, {"resize": 48}, (64, 48)),
        (64, 48, {"resize": 100}, (64, 48)),  # no upscale by default
        (64, 48, {"resize": 100, "upscale": True}, (133, 100)),
        (64, 48, {"center_crop": True}, (48, 48)),
        (48, 64, {"center_crop": True, "resize": 20}, (20, 20)),
        (64, 48, {"center_crop": True, "resize": 100}, (48, 48)),
        (64, 48, {"center_crop": True, "resize": 100, "upscale": True}, (100, 100)),
    ],
)
def test_resize_sizes(
    tmp_path: Path, w: int, h: int, opts: dict[str, object], expected: tuple[int, int]
) -> None:
    path = imagegen.write_image(tmp_path / "i.jpg", imagegen.index_pixels(7, h, w))
    out, img = run(path, **opts)
    assert img.size == expected
    assert imagegen.decode_index(img) == 7


@pytest.mark.parametrize(("w", "h"), [(64, 48), (48, 64), (65, 48), (48, 65)])
def test_center_crop_is_im2rec_exact(tmp_path: Path, w: int, h: int) -> None:
    ramp = ((np.arange(h)[:, None] * 3 + np.arange(w)[None, :]) % 256).astype(np.uint8)
    path = imagegen.write_image(tmp_path / "ramp.png", ramp, "PNG")
    out, img = run(path, center_crop=True, encoding=".png", color=-1)
    if h > w:
        margin = (h - w) // 2
        expected = ramp[margin : margin + w, :]
    else:
        margin = (w - h) // 2
        expected = ramp[:, margin : margin + h]
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_draft_path_matches_full_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = imagegen.make_big_jpeg(tmp_path / "big.jpg", 800, 600)
    data = path.read_bytes()
    scales = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        width = self.size[0]
        result = real_draft(self, mode, size)
        if result is not None:
            scales.append(round(width / result[1][2]))  # box = (0, 0, W / scale, H / scale)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = process_image(data, ImageOptions(resize=140, encoding=".png"))
    assert scales == [4]  # 600 // 140 = 4: libjpeg decoded at 200x150
    assert (out.width, out.height) == (186, 140)
    got = np.asarray(Image.open(io.BytesIO(out.data)))
    full = np.asarray(Image.open(path).convert("RGB"))
    ref_area = cv2.resize(full, (186, 140), interpolation=cv2.INTER_AREA)
    ref_lanczos = np.asarray(Image.fromarray(full).resize((186, 140), Image.Resampling.LANCZOS))
    assert imagegen.psnr(got, ref_area) > 30
    assert imagegen.psnr(got, ref_lanczos) > 30


# --------------------------------------------------------------------------------------------
# Round trips and the keep rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", [0, 1, 57, 200, 342])
def test_png_round_trip_is_exact(tmp_path: Path, i: int) -> None:
    src = imagegen.index_pixels(i, 30, 40)
    path = imagegen.write_image(tmp_path / "i.png", src, "PNG")
    for quality in (0, 6, 95):
        out, img = run(path, encoding=".png", quality=quality)
        assert out.reencoded and out.format == "png" and out.channels == 3
        np.testing.assert_array_equal(np.asarray(img), src)
        assert imagegen.decode_index(img) == i


def test_jpeg_round_trip_psnr(tmp_path: Path) -> None:
    src = photo()
    path = imagegen.write_image(tmp_path / "p.png", src, "PNG")
    out, img = run(path, quality=95)
    assert out.format == "jpeg" and out.reencoded
    assert imagegen.psnr(np.asarray(img), src) > 35


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 95, 100])
def test_quality_estimate(quality: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(photo(16, 16)).save(buf, "JPEG", quality=quality)
    assert _estimate_jpeg_quality(Image.open(buf)) == quality


def test_pass_through_keeps_bytes(tmp_path: Path) -> None:
    for path in (
        imagegen.make_exif_rotated_jpeg(tmp_path / "o.jpg", 6),
        imagegen.make_png_rgba(tmp_path / "a.png"),
        imagegen.make_cmyk_jpeg(tmp_path / "c.jpg"),
    ):
        data = path.read_bytes()
        out = process_image(data, ImageOptions(pass_through=True, resize=8, color=0))
        assert out.data == data and not out.reencoded
        assert (out.width, out.height) == Image.open(path).size
    out = process_image((tmp_path / "a.png").read_bytes(), ImageOptions(pass_through=True))
    assert (out.format, out.channels) == ("png", 4)


def test_keep_rule(tmp_path: Path) -> None:
    path = imagegen.write_image(tmp_path / "q75.jpg", photo(), "JPEG", quality=75)
    data = path.read_bytes()
    kept = process_image(data, ImageOptions(quality=95))
    assert kept.data == data and not kept.reencoded
    assert (kept.format, kept.width, kept.height, kept.channels) == ("jpeg", 160, 120, 3)
    assert not process_image(data, ImageOptions(quality=75)).reencoded
    assert not process_image(data, ImageOptions(resize=120)).reencoded  # already 120 short
    assert not process_image(data, ImageOptions(resize=200)).reencoded  # no upscale
    for opts in (
        ImageOptions(quality=70),  # source is better than asked: re-encode smaller
        ImageOptions(resize=60),
        ImageOptions(center_crop=True),
        ImageOptions(color=0),
        ImageOptions(encoding=".png"),
        ImageOptions(resize=200, upscale=True),
    ):
        assert process_image(data, opts).reencoded, opts
    rotated = imagegen.make_exif_rotated_jpeg(tmp_path / "r.jpg", 6, quality=75)
    assert process_image(rotated.read_bytes(), ImageOptions()).reencoded


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (imagegen.make_zero_byte, "^empty file$"),
        (imagegen.make_truncated_jpeg, "^truncated or corrupt image data"),
        (imagegen.make_text_as_jpg, r"^not an image \(cannot identify format\)$"),
    ],
)
@pytest.mark.parametrize("pass_through", [False, True])
def test_bad_inputs(tmp_path: Path, maker, reason: str, pass_through: bool) -> None:  # type: ignore[no-untyped-def]
    data = maker(tmp_path / "bad.jpg").read_bytes()
    for opts in (ImageOptions(pass_through=pass_through), ImageOptions(resize=16)):
        with pytest.raises(ImageError, match=reason) as info:
            process_image(data, opts)
        assert "\n" not in str(info.value)


def test_corrupt_png(tmp_path: Path) -> None:
    data = bytearray(imagegen.write_image(tmp_path / "p.png", photo(), "PNG").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = b"\x00" * 20
    with pytest.raises(ImageError, match="^truncated or corrupt image data"):
        process_image(bytes(data), ImageOptions(pass_through=True))
    with pytest.raises(ImageError, match="^truncated or corrupt image data"):
        process_image(bytes(data[: len(data) // 2]), ImageOptions())


def test_bomb_refused_from_header(tmp_path: Path) -> None:
    data = imagegen.make_bomb_png(tmp_path / "bomb.png").read_bytes()
    assert len(data) < 200_000
    limit_before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    for opts in (ImageOptions(), ImageOptions(pass_through=True), ImageOptions(resize=10)):
        with pytest.raises(
            ImageError,
            match=r"^decompression bomb: 30000x30000 pixels exceeds the limit of 178956970$",
        ):
            process_image(data, opts)
    assert time.perf_counter() - start < 1.0  # decoding would take seconds and ~900 MB
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    assert probe(data) == ("png", 30000, 30000)


def test_max_pixels_option(tmp_path: Path) -> None:
    data = imagegen.write_image(tmp_path / "i.jpg", imagegen.index_pixels(3, 48, 64)).read_bytes()
    with pytest.raises(
        ImageError, match="^decompression bomb: 64x48 pixels exceeds the limit of 3000$"
    ):
        process_image(data, ImageOptions(max_pixels=3000))
    assert process_image(data, ImageOptions(max_pixels=3072)).width == 64


def test_probe(tmp_path: Path) -> None:
    rotated = imagegen.make_exif_rotated_jpeg(tmp_path / "o.jpg", 6)
    assert probe(rotated.read_bytes()) == ("jpeg", 48, 64)  # stored size
    png = imagegen.make_palette_png(tmp_path / "p.png")
    assert probe(png.read_bytes()) == ("png", 64, 48)
    gif = tmp_path / "x.gif"
    Image.new("P", (5, 7)).save(gif)
    assert probe(gif.read_bytes()) == ("gif", 5, 7)
    with pytest.raises(ImageError, match="^empty file$"):
        probe(b"")
    with pytest.raises(ImageError, match="^not an image"):
        probe(b"hello")


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_deterministic_across_calls_and_threads(tmp_path: Path) -> None:
    inputs = [
        imagegen.make_big_jpeg(tmp_path / "big.jpg", 400, 300).read_bytes(),
        imagegen.make_exif_rotated_jpeg(tmp_path / "o.jpg", 8, h=96, w=128).read_bytes(),
        imagegen.make_cmyk_jpeg(tmp_path / "c.jpg").read_bytes(),
        imagegen.write_image(tmp_path / "p.png", photo(), "PNG").read_bytes(),
    ]
    options = [
        ImageOptions(resize=64),
        ImageOptions(resize=48, center_crop=True, quality=80),
        ImageOptions(resize=40, encoding=".png", color=0),
        ImageOptions(quality=90),
    ]
    jobs = [(d, o) for d in inputs for o in options] * 3
    sequential = [process_image(d, o) for d, o in jobs]
    again = [process_image(d, o) for d, o in jobs]
    assert [r.data for r in again] == [r.data for r in sequential]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: process_image(*job), jobs))
    assert [r.data for r in threaded] == [r.data for r in sequential]
    assert threaded == sequential
