"""Decoding bounded by the model and by one memory budget: a huge image is refused from its header, a JPEG decodes
at a reduced scale, and a burst of large images waits for room and then gets a 503, never more memory."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from PIL import Image

from models.artifacts import InputSpec
from service.decoding import DecodeBudget, Decoder
from service.errors import Overloaded, PayloadTooLarge, UnsupportedMediaType
from service.imaging import ImagePreprocessor
from tests.service.conftest import MEAN, STD, png_bytes

SPEC = InputSpec(32, 32, None, MEAN, STD)
RGB_BYTES = 8  # an RGB image decodes into 4 bytes a pixel (Pillow's layout), and its RGB copy takes 4 more


def _encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_an_image_far_larger_than_the_model_is_refused_from_its_header():
    bomb = _encode(Image.new("L", (6300, 6300)))  # ~40 KB of PNG, 40 M pixels
    preprocess = ImagePreprocessor(SPEC, max_pixels=40_000_000, max_image_scale=64)
    with pytest.raises(PayloadTooLarge, match=r"6300x6300.*2048x|4194304 pixels"):
        preprocess.decode_cost(bomb)
    with pytest.raises(PayloadTooLarge):
        preprocess(bomb)
    # at the limit it decodes, and its cost is known before it does
    edge = _encode(Image.new("RGB", (2048, 2048)))
    assert preprocess.decode_cost(edge) == 2048 * 2048 * RGB_BYTES
    assert preprocess(edge).shape == (3, 32, 32)


def test_a_large_jpeg_decodes_at_a_reduced_scale_that_still_covers_the_input():
    photo = _encode(Image.new("RGB", (4000, 3000), (200, 30, 30)), "JPEG")
    preprocess = ImagePreprocessor(SPEC, max_pixels=40_000_000, max_image_scale=64)
    # 1/8 scale: 500 x 375 still covers a 32 x 32 input, and is far below the model's bound
    assert preprocess.decode_cost(photo) == 500 * 375 * RGB_BYTES
    tensor = preprocess(photo)
    assert tensor.shape == (3, 32, 32)
    plain = ImagePreprocessor(SPEC, max_pixels=40_000_000)  # as before: the same image, fully decoded, close
    assert torch.allclose(tensor, plain(photo), atol=0.05)


def test_a_png_is_never_drafted_and_a_non_image_is_refused_from_the_header():
    preprocess = ImagePreprocessor(SPEC, max_pixels=10**8, max_image_scale=64)
    assert preprocess.decode_cost(png_bytes((300, 200))) == 300 * 200 * RGB_BYTES
    # greyscale decodes into a byte a pixel; alpha costs the compositing's copies as well
    assert preprocess.decode_cost(png_bytes((300, 200), "L")) == 300 * 200 * (1 + 4)
    assert preprocess.decode_cost(png_bytes((300, 200), "RGBA")) == 300 * 200 * (4 + 4 + 12)
    with pytest.raises(UnsupportedMediaType):
        preprocess.decode_cost(b"%PDF-1.4 not an image")


def test_the_budget_lets_a_reservation_wait_for_room_then_refuses():
    async def scenario() -> list[str]:
        budget = DecodeBudget(100)
        events = []
        with pytest.raises(PayloadTooLarge):
            async with budget.reserve(101, wait_s=1):
                pass
        async with budget.reserve(80, wait_s=0):
            with pytest.raises(Overloaded) as refused:  # no room, no time to wait: 503 with Retry-After
                async with budget.reserve(30, wait_s=0.05):
                    pass
            assert refused.value.headers["Retry-After"] == "1"

            async def waiter() -> None:
                async with budget.reserve(30, wait_s=5):
                    events.append("second decoded")

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.05)
            events.append("first done")
        await task
        assert budget.in_use == 0
        return events

    assert asyncio.run(scenario()) == ["first done", "second decoded"]


def test_a_burst_of_large_images_keeps_to_the_budget():
    async def scenario() -> tuple[int, int, int]:
        # room for two 512 x 512 decodes at once
        decoder = Decoder(memory_bytes=2 * 512 * 512 * RGB_BYTES, threads=2, wait_s=0.01)
        preprocess = ImagePreprocessor(SPEC, max_pixels=10**8, max_image_scale=64)
        image = png_bytes((512, 512))
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, decoder.budget.in_use)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(
            *(decoder.tensors(preprocess, [image]) for _ in range(8)), return_exceptions=True
        )
        watcher.cancel()
        refused = sum(isinstance(o, Overloaded) for o in outcomes)
        done = sum(isinstance(o, list) for o in outcomes)
        return peak, done, refused

    peak, done, refused = asyncio.run(scenario())
    assert peak <= 2 * 512 * 512 * RGB_BYTES
    assert done >= 2 and done + refused == 8
