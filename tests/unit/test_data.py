from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from raydetect.attacks import quantize as quantize_tensor
from raydetect.images import (
    ImageError,
    Preprocess,
    decode_image,
    decode_png,
    digits_split,
    encode_png,
    imagenet_classes,
    imagenet_label,
)


def quantize(images: np.ndarray, clean: np.ndarray | None = None, eps: float | None = None) -> np.ndarray:
    import torch

    c = None if clean is None else torch.from_numpy(clean)
    return quantize_tensor(torch.from_numpy(images), c, eps).numpy()


PRE = Preprocess(resize=40, crop=32)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
    ],
)
def test_modes_are_converted_to_model_input(mode: str, fmt: str) -> None:
    x = decode_image(_encode(_photo(mode), fmt), PRE)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    x = decode_image(_encode(Image.fromarray(arr), "PNG"), PRE)
    assert x.shape == (3, 32, 32)
    assert 0.2 < x.mean() < 0.8  # clipping at 255 would make it nearly all white


def test_transparent_pixels_show_on_white() -> None:
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    x = decode_image(_encode(img, "PNG"), PRE)
    assert np.allclose(x, 1.0)


def test_grey_model_gets_one_channel() -> None:
    x = decode_image(_encode(_photo(), "PNG"), Preprocess(resize=8, crop=8, channels=1))
    assert x.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am a text file", "not an image"),
        (_encode(_photo(), "JPEG")[:300], "truncated"),
        (_encode(_photo(size=(3, 3)), "PNG"), "too small"),
    ],
)
def test_bad_inputs_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_image(data, PRE)


def test_png_round_trip_is_lossless_on_the_8bit_grid(rng) -> None:
    x = quantize(rng.random((3, 16, 16)).astype(np.float32))
    assert np.array_equal(decode_png(encode_png(x)), x)
    g = quantize(rng.random((1, 8, 8)).astype(np.float32))
    assert np.array_equal(decode_png(encode_png(g)), g)


def test_class_table_and_labels() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0].wnid == "n01440764" and classes[0].index == 0
    assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)
    assert imagenet_label("/data/n01440764/x.JPEG") == 0
    assert imagenet_label("/data/unlabelled/x.JPEG") == -1


def test_digits_split_is_fixed_and_in_range() -> None:
    (a, _ya), (b, _yb) = digits_split()
    (a2, _), _ = digits_split()
    assert np.array_equal(a, a2)
    assert a.shape[1:] == (1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert len(a) + len(b) == 1797


def test_quantizing_an_adversarial_keeps_it_in_the_eps_ball(rng) -> None:
    clean = rng.random((2, 3, 16, 16)).astype(np.float32)  # off the 8-bit grid, like digits
    eps = 4 / 255
    adv = np.clip(clean + eps * np.sign(rng.normal(size=clean.shape)), 0, 1).astype(np.float32)
    q = quantize(adv, clean, eps)
    assert np.abs(q - clean).max() <= eps + 1e-6
    assert np.allclose(q * 255, np.rint(q * 255), atol=1e-4)
    assert np.abs(quantize(adv) - clean).max() > eps  # plain rounding would leave the ball


def test_images_already_at_input_size_are_used_as_they_are(rng) -> None:
    arr = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    x = decode_image(_encode(Image.fromarray(arr, "RGB"), "PNG"), PRE)  # PRE: resize 40, crop 32
    assert np.array_equal(np.rint(x * 255).astype(np.uint8), arr.transpose(2, 0, 1))


def test_offset_and_limit_take_the_same_slice_as_the_whole_list() -> None:
    from raydetect.images import load_digits_images

    whole = load_digits_images("test")
    part = load_digits_images("test", limit=7, offset=5)
    assert part.ids == whole.ids[5:12]
    np.testing.assert_array_equal(part.images, whole.images[5:12])
    np.testing.assert_array_equal(part.labels, whole.labels[5:12])
    assert load_digits_images("test", offset=len(whole.ids) - 2).ids == whole.ids[-2:]


def _torchvision_preprocess(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """The preprocessing as it was written with torchvision (the reference raydetect must match)."""
    import torchvision.transforms.functional as TF

    from raydetect.images import _to_rgb_or_l

    img = _to_rgb_or_l(ImageOps.exif_transpose(img), pre.channels)
    mode = TF.InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    if img.size != (pre.crop, pre.crop):
        if min(img.size) != pre.resize:
            img = TF.resize(img, pre.resize, interpolation=mode, antialias=True)
        img = TF.center_crop(img, [pre.crop, pre.crop])
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("size", "pre"),
    [
        ((64, 48), PRE),  # landscape, downscaled
        ((47, 74), PRE),  # portrait: the long side truncates (62.98 -> 62)
        ((47, 72), PRE),  # the crop offset rounds half to even (14.5 -> 14), as torchvision's round does
        ((33, 90), Preprocess(resize=40, crop=32, interpolation="bicubic")),  # upscaled, bicubic
        ((40, 55), PRE),  # short side already at the resize: cropped only
        ((50, 40), Preprocess(resize=20, crop=32)),  # resized below the crop: zero-padded, as torchvision pads
        ((60, 60), Preprocess(resize=40, crop=32, channels=1)),
    ],
)
def test_preprocessing_matches_torchvision_exactly(size: tuple[int, int], pre: Preprocess) -> None:
    img = _photo(size=size)
    ours = decode_image(_encode(img, "PNG"), pre)
    assert ours.shape == (pre.channels, pre.crop, pre.crop)
    np.testing.assert_array_equal(ours, _torchvision_preprocess(img, pre))


def test_preprocessing_matches_torchvision_on_real_photos() -> None:
    from raydetect.models import model_info
    from tests.conftest import imagenet_sample_or_skip

    files = sorted(imagenet_sample_or_skip().glob("*/*"))[::40]  # 13 photos of assorted sizes
    pre = model_info("efficientnet_lite0").preprocess
    for f in files:
        with Image.open(f) as img:
            img.load()
            np.testing.assert_array_equal(decode_image(f.read_bytes(), pre), _torchvision_preprocess(img, pre), err_msg=str(f))
