"""Tests of images.py: decoding any of Pillow's image modes to 8-bit RGB, and a training folder
with files that do not decode and images of the wrong size or shape.

    python -m pytest -q tests/test_images.py
"""

import numpy as np
from PIL import Image

from plumbing import checkpoint
from tests.helpers import TINY, make_images, run_train
from plumbing.images import load_image


def test_images_of_every_mode_load_as_rgb(tmp_path):
    """Grey, palette, RGBA (composited on white), LA, CMYK and 16-bit grey all load as (3, S, S) uint8."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    rgba = np.zeros((8, 8, 4), np.uint8)                     # fully transparent black -> white
    cases = {
        "grey.png": (Image.fromarray(np.full((8, 8), 77, np.uint8), "L"), (77, 77, 77)),
        "pal.png": (Image.fromarray(rgb).convert("P"), (200, 0, 0)),
        "rgba.png": (Image.fromarray(rgba, "RGBA"), (255, 255, 255)),
        "la.png": (Image.fromarray(np.zeros((8, 8, 2), np.uint8), "LA"), (255, 255, 255)),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), (200, 0, 0)),
        "grey16.png": (Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),
    }
    for name, (img, colour) in cases.items():
        img.save(tmp_path / name)
        a, size = load_image(tmp_path / name, 16)
        assert a.shape == (3, 16, 16) and a.dtype == np.uint8 and size == (8, 8), name
        assert np.abs(a.reshape(3, -1).mean(1) - np.array(colour)).max() <= 3, (name, a.reshape(3, -1).mean(1))


def test_bad_files_are_skipped_and_odd_sizes_resized(tmp_path, capsys):
    """A training folder with bad files still trains: an undecodable file is named and skipped;
    small/non-square images are resized with one line saying how many; training finishes."""
    data = make_images(tmp_path / "data", n=2, size=128)
    Image.fromarray(np.zeros((40, 90, 3), np.uint8)).save(data / "wide.jpg")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    code, out, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1", *TINY], capsys)
    assert code == 0
    assert "skipping" in out and "broken.jpg" in out and "skipped 1 unreadable file(s) of 4" in out
    assert "1 of 3 images were smaller than 128 or not square" in out
    assert "data: 3 images" in out
    assert checkpoint.load_checkpoint(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt")["iteration"] == 1
