import io

import pytest
from PIL import Image

from descriptors.images import ImageDecodeError, decode_image


def _jpeg_bytes(width=64, height=48, color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_decodes_rgb_from_bytes_and_path(tmp_path):
    data = _jpeg_bytes()
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (64, 48)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert decode_image(path).size == (64, 48)


def test_grayscale_png_becomes_rgb():
    buffer = io.BytesIO()
    Image.new("L", (20, 30), 128).save(buffer, format="PNG")
    img = decode_image(buffer.getvalue())
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not a picture", "not-an-image"),
        (_jpeg_bytes(256, 256)[:400], "truncated"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == reason
    assert str(info.value)


def test_decompression_bomb_refused_from_header():
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000), 0).save(buffer, format="PNG")  # compresses to a few KB
    with pytest.raises(ImageDecodeError) as info:
        decode_image(buffer.getvalue(), max_pixels=1_000_000)
    assert info.value.reason == "too-large"
    assert "16,000,000" in str(info.value)


def test_tiny_image_refused():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_jpeg_bytes(1, 1))
    assert info.value.reason == "too-small"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tmp_path / "nope.jpg")
    assert info.value.reason == "unreadable"


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue()).size == (20, 40)
