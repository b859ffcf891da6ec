"""scikit-image's sample photos as RGB PIL images, and written to a folder."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from descriptors.sample_photos import sample_photo, write_sample_photos


def test_sample_photos_are_rgb_whatever_the_source_array() -> None:
    camera = sample_photo("camera")  # greyscale (512, 512)
    assert camera.mode == "RGB" and camera.size == (512, 512)
    assert len(set(camera.getpixel((100, 100)))) == 1
    assert sample_photo("immunohistochemistry").mode == "RGB"
    assert sample_photo("stereo_motorcycle").size == (741, 500)  # the pair's left view
    assert max(sample_photo("astronaut", max_side=128).size) == 128


def test_write_sample_photos_names_files_after_the_samples(tmp_path: Path) -> None:
    paths = write_sample_photos(tmp_path / "photos", ["coffee", "camera"])
    assert [p.name for p in paths] == ["coffee.jpg", "camera.jpg"]
    with Image.open(paths[1]) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (512, 512)
    paths[0].write_bytes(b"kept")
    assert write_sample_photos(tmp_path / "photos", ["coffee"], overwrite=False) == paths[:1]
    assert paths[0].read_bytes() == b"kept"
    write_sample_photos(tmp_path / "photos", ["coffee"])
    assert paths[0].read_bytes() != b"kept"
