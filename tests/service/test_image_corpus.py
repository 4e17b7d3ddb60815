"""A corpus of bad and awkward images, each with the status the service must answer."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode=mode)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _bomb(side: int = 20000) -> bytes:
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(_noise(), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], loop=0)
    return buffer.getvalue()


def _palette_with_alpha() -> bytes:
    image = _noise().convert("P")
    image.info["transparency"] = 0
    return _save(image, "PNG", transparency=0)


CORPUS = {
    "zero bytes": (b"", "image/png", 400),
    "truncated PNG": (_save(_noise(), "PNG")[:300], "image/png", 400),
    "truncated JPEG": (_save(_noise((256, 256)), "JPEG")[:2000], "image/jpeg", 400),
    "1x1": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "image/png", 200),
    "20000x20000 decompression bomb": (_bomb(), "image/png", 413),
    "CMYK JPEG": (_save(Image.new("CMYK", (32, 32), (0, 128, 255, 0)), "JPEG"), "image/jpeg", 200),
    "16-bit PNG": (
        _save(Image.fromarray(np.arange(1024, dtype=np.uint16).reshape(32, 32) * 60), "PNG"),
        "image/png",
        200,
    ),
    "palette PNG with transparency": (_palette_with_alpha(), "image/png", 200),
    "RGBA PNG": (_save(_noise(mode="RGBA"), "PNG"), "image/png", 200),
    "EXIF-rotated JPEG": (_exif_rotated(), "image/jpeg", 200),
    "animated GIF": (_animated_gif(), "image/gif", 200),
    "text sent as image/png": (b"hello, I am not a picture", "image/png", 415),
    "WebP": (_save(_noise(), "WEBP"), "image/webp", 200),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_image_gets_its_expected_status(client, name):
    body, content_type, expected = CORPUS[name]
    response = client.post("/v1/classify?variant=blockdrop", content=body, headers={"content-type": content_type})
    assert response.status_code == expected, response.text
    if expected == 200:
        assert response.json()["prediction"]["label"]
    else:
        assert response.json()["error"]
    assert client.get("/healthz/ready").status_code == 200
