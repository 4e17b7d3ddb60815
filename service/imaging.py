"""Image bytes -> a normalised tensor, as the artifact's manifest says, with limits checked before decoding.

The pixel count is read from the header and checked before any pixel is decoded, so a decompression bomb
costs nothing. The bound is the model's: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
covers the model's input, and an image that would still decode to more than ``max_image_scale`` times the model's
input a side is refused, since nothing of it would reach the model but a resize. EXIF orientation is applied;
palette, alpha (composited on white), CMYK, greyscale and 16-bit images become 8-bit RGB; an animated image gives
its first frame. The short side is resized to the manifest's
``resize`` (or the input size) and the centre cropped.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from models.artifacts import InputSpec
from service.errors import BadInput, PayloadTooLarge, UnsupportedMediaType

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# bytes per pixel of the decoded image, by mode (Pillow keeps 3-band images in 4 bytes a pixel)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_ALPHA_MODES = ("RGBA", "LA", "PA", "P")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_header(data: bytes) -> Image.Image:
    """Open ``data`` lazily: the header is parsed, no pixel is decoded (Pillow's own bomb warning is ours to give)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=FORMATS)


def decode_image(data: bytes, max_pixels: int, spec: InputSpec | None = None) -> Image.Image:
    """Decode ``data`` into an 8-bit RGB image, refusing what is not an image or too large; with ``spec``, a JPEG
    is decoded at the smallest scale that still covers that input."""
    image = open_checked(data, max_pixels)
    if spec is not None:
        draft_for(image, spec)
    return load_rgb(image)


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The image's header, after the format and the declared pixel count are checked (no pixel decoded yet)."""
    if not data:
        raise BadInput("the image is empty: no bytes were sent")
    try:
        image = open_header(data)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"the image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise BadInput("the image has no pixels")
    return image


def needed_size(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    """The size ``resize_and_crop`` scales an image of ``size`` to: its short side to the manifest's resize."""
    short_side = spec.resize or max(spec.width, spec.height)
    scale = short_side / min(size)
    return max(spec.width, round(size[0] * scale)), max(spec.height, round(size[1] * scale))


def draft_for(image: Image.Image, spec: InputSpec) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale where that still covers what the model needs (header only; other
    formats have no reduced decode and are left as they are)."""
    if image.format == "JPEG":
        image.draft("RGB", needed_size(image.size, spec))


def decode_bytes(image: Image.Image) -> int:
    """The peak bytes of decoding an opened image: the decoded pixels, and beside them what ``to_rgb`` makes of
    them (an RGB copy; with alpha, an RGBA copy, a white RGBA canvas and their composite first)."""
    decoded = _MODE_BYTES.get(image.mode, 4)
    converted = 4 + (12 if image.mode in _ALPHA_MODES else 0)
    return image.width * image.height * (decoded + converted)


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image into 8-bit RGB, upright."""
    try:
        image.seek(0)
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise BadInput(f"the image data is corrupt or truncated ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, spec: InputSpec) -> Image.Image:
    target_w, target_h = spec.width, spec.height
    if image.size == (target_w, target_h):
        return image
    image = image.resize(needed_size(image.size, spec), Image.Resampling.BICUBIC)
    left, top = (image.width - target_w) // 2, (image.height - target_h) // 2
    return image.crop((left, top, left + target_w, top + target_h))


@functools.cache
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """[3, 1, 1] tensors of 255 * mean and 255 * std: built once, not per request."""
    return torch.tensor(mean).mul_(255.0).view(3, 1, 1), torch.tensor(std).mul_(255.0).view(3, 1, 1)


def normalize(pixels: Tensor, spec: InputSpec) -> Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] and normalised by the manifest's mean / std."""
    if spec.mean is None or spec.std is None:
        return pixels.float().div_(255.0)
    mean, std = _channel_constants(spec.mean, spec.std)
    return pixels.float().sub_(mean).div_(std)  # (p / 255 - m) / s == (p - 255 m) / (255 s)


class ImagePreprocessor:
    """Turns request bytes into one model input [3, H, W] for a given input spec. ``max_pixels`` bounds any image's
    declared size; ``max_image_scale`` bounds the pixels decoded: a square that many times the model's input a side."""

    def __init__(self, spec: InputSpec, max_pixels: int, max_image_scale: float | None = None):
        self.spec = spec
        self.max_pixels = max_pixels
        side = max(spec.width, spec.height, spec.resize or 0)
        self.max_decoded_pixels = max_pixels if max_image_scale is None else int((max_image_scale * side) ** 2)
        self.max_image_scale = max_image_scale

    def open(self, data: bytes) -> tuple[Image.Image, int]:
        """The image, its header parsed and nothing decoded, and the bytes decoding it will take at its peak; an
        image that is no image, is corrupt at the header or too large for this model is refused here."""
        image = open_checked(data, self.max_pixels)
        draft_for(image, self.spec)
        self._refuse_oversized(image)
        return image, decode_bytes(image)

    def decode_cost(self, data: bytes) -> int:
        """The bytes decoding ``data`` will take at its peak, from the header alone."""
        return self.open(data)[1]

    def _refuse_oversized(self, image: Image.Image) -> None:
        if image.width * image.height <= self.max_decoded_pixels:
            return
        spec = self.spec
        raise PayloadTooLarge(
            f"the image decodes to {image.width}x{image.height} pixels; this model takes {spec.width}x{spec.height} "
            f"images and decodes at most {self.max_decoded_pixels} pixels ({self.max_image_scale:g}x its input a side, "
            "the max_image_scale setting): send a smaller image, or a JPEG, which decodes at a reduced scale"
        )

    def __call__(self, data: bytes) -> Tensor:
        return self.decode(self.open(data)[0])

    def decode(self, image: Image.Image) -> Tensor:
        """The model input from an image ``open`` returned (its header is parsed once, not again here)."""
        image = resize_and_crop(load_rgb(image), self.spec)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return normalize(pixels, self.spec)
