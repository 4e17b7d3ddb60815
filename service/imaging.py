"""Image bytes -> a normalised tensor, as the artifact's manifest says, with limits checked before decoding.

The pixel count is read from the header and checked before any pixel is decoded, so a decompression bomb
costs nothing. EXIF orientation is applied; palette, alpha (composited on white), CMYK, greyscale and 16-bit
images become 8-bit RGB; an animated image gives its first frame. The short side is resized to the manifest's
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
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_header(data: bytes) -> Image.Image:
    """Open ``data`` lazily: the header is parsed, no pixel is decoded (Pillow's own bomb warning is ours to give)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=FORMATS)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an 8-bit RGB image, refusing what is not an image or too large."""
    if not data:
        raise BadInput("the request body is empty; send the image bytes")
    try:
        image = open_header(data)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"the image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"the body is not an image in a supported format ({', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise BadInput("the image has no pixels")
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
    short_side = spec.resize or max(target_w, target_h)
    scale = short_side / min(image.size)
    size = (max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
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


def declared_pixels(data: bytes) -> int | None:
    """Width x height from the image header alone (no pixel is decoded); None when it cannot be read."""
    try:
        width, height = open_header(data).size
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None
    return width * height


class ImagePreprocessor:
    """Turns request bytes into one model input [3, H, W] for a given input spec."""

    def __init__(self, spec: InputSpec, max_pixels: int):
        self.spec = spec
        self.max_pixels = max_pixels

    def cheap(self, images: list[bytes], pixel_budget: int) -> bool:
        """Whether decoding all of ``images`` is cheaper than handing them to a worker thread: small bodies
        whose headers declare at most ``pixel_budget`` pixels in all (bad or unreadable input is never cheap)."""
        if sum(len(data) for data in images) > 4 * pixel_budget:
            return False
        total = 0
        for data in images:
            pixels = declared_pixels(data)
            if pixels is None:
                return False
            total += pixels
        return total <= pixel_budget

    def __call__(self, data: bytes) -> Tensor:
        image = resize_and_crop(decode_image(data, self.max_pixels), self.spec)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return normalize(pixels, self.spec)
