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


def _jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buffer, format="JPEG", quality=80, exif=exif.tobytes())
    return buffer.getvalue()


def test_a_jpeg_is_decoded_at_the_scale_the_backbone_needs() -> None:
    from descriptors.images import DRAFT_MARGIN, decode_image, full_size

    assert DRAFT_MARGIN == 2
    data = _jpeg((4800, 3200))
    img = decode_image(data, reduce_to=320)
    assert img.size == (1200, 800) and full_size(img) == (4800, 3200)  # 1/4: 800 >= 2 x 320 > 400
    full = decode_image(data)
    assert full.size == full_size(full) == (4800, 3200)
    # a region keeps enough pixels for its crop: a 1200x1000 region (1000 < 2 x 640) decodes in full
    region = decode_image(data, reduce_to=640, region=(100, 100, 1300, 1100))
    assert region.size == (4800, 3200)
    half = decode_image(data, reduce_to=320, region=(0, 0, 2800, 1400))  # 1400 / 2 = 700 >= 640
    assert half.size == (2400, 1600) and full_size(half) == (4800, 3200)
    # a photo no larger than twice the target (Paris: 1024x768 for 320 px) decodes in full
    assert decode_image(_jpeg((1024, 768)), reduce_to=320).size == (1024, 768)


def test_the_full_size_follows_the_exif_rotation() -> None:
    from descriptors.images import decode_image, full_size

    img = decode_image(_jpeg((4800, 3200), orientation=6), reduce_to=320)  # 90 degrees
    assert img.size == (800, 1200) and full_size(img) == (3200, 4800)


def test_pixels_needs_the_array_decoder_enabled() -> None:
    """Off until a program enables it (importing torchvision costs seconds): a PIL image then."""
    import subprocess
    import sys

    probe = ("import io, sys; from PIL import Image; from descriptors.images import decode_image, enable_array_decoder; "
             "b = io.BytesIO(); Image.new('RGB', (32, 24), (9, 8, 7)).save(b, 'JPEG'); "
             "before = type(decode_image(b.getvalue(), pixels=True)).__name__; "
             "print(before, 'torchvision' in sys.modules, enable_array_decoder(), type(decode_image(b.getvalue(), pixels=True)).__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["JpegImageFile", "False", "True", "RGBPixels"]


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_pixels_of_a_colour_jpeg_equal_pils_in_every_orientation(orientation) -> None:
    """decode_image(pixels=True): the array decoder gives exactly PIL's RGB values, rotated the same."""
    import numpy as np

    from descriptors.images import RGBPixels, enable_array_decoder, full_size

    assert enable_array_decoder()

    data = _jpeg((70, 50), orientation)
    image, fast = decode_image(data), decode_image(data, reduce_to=16, pixels=True)
    assert isinstance(fast, RGBPixels) and fast.mode == "RGB"
    assert fast.size == image.size == full_size(fast) and fast.width == image.width
    assert np.array_equal(np.asarray(fast), np.asarray(image))
    rect = (3, 4, 40, 30)
    assert np.array_equal(np.asarray(fast.crop(rect)), np.asarray(image.crop(rect)))


def test_pixels_of_real_photos_equal_pils(sample_photos) -> None:
    import numpy as np

    from descriptors.images import RGBPixels, enable_array_decoder

    assert enable_array_decoder()
    for name in ("chelsea", "astronaut", "coffee"):
        buffer = io.BytesIO()
        sample_photos[name].save(buffer, format="JPEG", quality=92)
        fast = decode_image(buffer.getvalue(), pixels=True)
        assert isinstance(fast, RGBPixels)
        assert np.array_equal(np.asarray(fast), np.asarray(decode_image(buffer.getvalue()))), name


def test_pixels_falls_back_to_pil_and_its_errors() -> None:
    """Not a colour JPEG at full scale: a PIL image as before; a bad one: the same error."""
    import numpy as np

    from descriptors.images import RGBPixels, enable_array_decoder

    assert enable_array_decoder()
    gray = io.BytesIO()
    Image.new("L", (20, 30), 128).save(gray, format="JPEG")
    png = io.BytesIO()
    Image.new("RGB", (20, 30), (1, 2, 3)).save(png, format="PNG")
    for data in (gray.getvalue(), png.getvalue()):
        img = decode_image(data, pixels=True)
        assert not isinstance(img, RGBPixels) and img.mode == "RGB"
    drafted = decode_image(_jpeg((640, 480), None), reduce_to=100, pixels=True)  # decoded at 1/2
    assert not isinstance(drafted, RGBPixels) and drafted.size == (320, 240)
    noise = _jpeg((256, 256))
    for data, reason in ((noise[:400], "truncated"), (noise[: len(noise) // 2], "truncated"), (_jpeg_bytes(4, 4), "too-small")):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data, pixels=True)
        assert info.value.reason == reason
    assert np.asarray(decode_image(_jpeg_bytes(8, 8), pixels=True)).shape == (8, 8, 3)
