import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.artifacts import InputSpec
from service.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from service.imaging import ImagePreprocessor, decode_image, resize_and_crop
from tests.service.conftest import MEAN, STD, png_bytes
from training.data import Normalizer

SPEC = InputSpec(32, 32, None, MEAN, STD)


def _encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_a_32x32_png_is_preprocessed_exactly_as_in_training():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tensor = ImagePreprocessor(SPEC, 10**6)(_encode(Image.fromarray(pixels)))
    expected = Normalizer(MEAN, STD)(torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0))[0]
    assert torch.allclose(tensor, expected, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (320, 200), (31, 64)])
def test_any_size_becomes_the_input_size(size):
    assert ImagePreprocessor(SPEC, 10**6)(png_bytes(size)).shape == (3, 32, 32)


def test_imagenet_style_resize_then_centre_crop():
    spec = InputSpec(224, 224, 256, MEAN, STD)
    image = Image.new("RGB", (512, 300))
    assert resize_and_crop(image, spec).size == (224, 224)


def test_awkward_formats_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: composited on white
    assert decode_image(_encode(rgba), 10**6).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (8, 8), 3)
    assert decode_image(_encode(palette), 10**6).mode == "RGB"
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert decode_image(_encode(cmyk, "JPEG"), 10**6).getpixel((0, 0))[0] > 200
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert decode_image(_encode(sixteen), 10**6).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (8, 8), 128)
    assert decode_image(_encode(grey, "WEBP"), 10**6).getpixel((0, 0))[0] in range(120, 136)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()), 10**6)
    assert decoded.size == (20, 40)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    red, green, _ = decode_image(buffer.getvalue(), 10**6).getpixel((0, 0))
    assert red > 200 and green < 50


def test_limits_and_garbage():
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        decode_image(png_bytes((20, 20)), max_pixels=100)
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"%PDF-1.4 not an image", 10**6)
    with pytest.raises(BadInput, match="empty"):
        decode_image(b"", 10**6)
    with pytest.raises(BadInput, match="corrupt"):
        decode_image(png_bytes((64, 64))[:-40], 10**6)
