"""Bad image files do not sink a whole load (issue 23, item 3): empty, truncated and non-image files are skipped
and reported (or stop the load on request), decompression bombs are refused before decoding, and messages name
the caller's own argument names."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mll_jax import images as images_mod
from mll_jax.errors import ImageDecodeError, ImageTooLargeError, MLLError
from mll_jax.images import LoadedImages, SkippedFile, load_folder, load_image, load_images


def _png_bytes(seed: int, size=(12, 10)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 1-bit pixels: a few dozen bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_folder(d):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (d / f"good{i}.png").write_bytes(_png_bytes(i))
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.png").write_bytes(_png_bytes(7)[:60])
    (d / "notes.jpeg").write_text("not an image at all\n")
    return d


def test_a_folder_with_bad_files_loads_the_good_ones_and_reports_the_rest(tmp_path):
    folder = _bad_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="skipped 3 of 6 image files"):
        result = load_images(folder, 8)
    images, files = result  # still the (images, files) pair
    assert isinstance(result, LoadedImages) and result.images is images and result.files is files
    assert images.shape == (3, 8, 8, 3) and [f.name for f in files] == ["good0.png", "good1.png", "good2.png"]
    assert [s.path.name for s in result.skipped] == ["empty.jpg", "notes.jpeg", "truncated.png"]
    assert all(isinstance(s, SkippedFile) and s.path.name in s.reason for s in result.skipped)
    want = np.stack([load_image(f, 8) for f in files])
    assert np.array_equal(images, want)
    # the same files through an explicit list, on one thread
    with pytest.warns(UserWarning):
        again = load_images(sorted(folder.iterdir()), 8, threads=1)
    assert np.array_equal(again[0], images) and len(again.skipped) == 3


def test_on_error_stop_raises_naming_the_first_bad_file(tmp_path):
    folder = _bad_folder(tmp_path / "imgs")
    with pytest.raises(ImageDecodeError, match="cannot decode image file .*empty.jpg"):
        load_images(folder, 8, on_error="stop", threads=1)
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_images(folder, 8, on_error="ignore")
    with pytest.raises(ValueError, match="--on_error must be one of"):
        load_images(folder, 8, on_error="ignore", arg_names={"on_error": "--on_error"})


def test_all_bad_files_raise_and_missing_paths_stay_errors(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_bytes(b"")
    (d / "b.png").write_bytes(b"\x89PNG")
    with pytest.raises(ImageDecodeError, match="none of the 2 image files can be decoded"):
        load_images(d, 8)
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_images([d / "a.png", tmp_path / "nope.png"], 8)


def test_load_folder_skips_and_reports_bad_files_per_class(tmp_path):
    root = tmp_path / "ds"
    _bad_folder(root / "cats")
    (root / "dogs").mkdir()
    (root / "dogs" / "d.png").write_bytes(_png_bytes(11))
    (root / "dogs" / "zero.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 4 of 8"):
        res = load_folder(root, 8)
    images, labels, classes = res
    assert classes == ["cats", "dogs"] and images.shape == (4, 8, 8, 3) and labels.tolist() == [0, 0, 0, 1]
    assert sorted(s.path.name for s in res.skipped) == ["empty.jpg", "notes.jpeg", "truncated.png", "zero.png"]
    with pytest.raises(ImageDecodeError):
        load_folder(root, 8, on_error="stop")


def test_mixed_sizes_message_names_the_callers_argument(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes(1, (12, 10)))
    (tmp_path / "b.png").write_bytes(_png_bytes(2, (9, 9)))
    with pytest.raises(ImageDecodeError, match=r"pass size=N to resize"):
        load_images(tmp_path, None)
    with pytest.raises(ImageDecodeError, match=r"pass --image_size=N to resize"):
        load_images(tmp_path, None, arg_names={"size": "--image_size"})


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(10_000, 10_000))  # 1e8 pixels declared in ~100 bytes
    assert bomb.stat().st_size < 200
    with pytest.raises(ImageTooLargeError, match=r"10000x10000 = 100,000,000 pixels, over the limit of "
                                                 r"89,478,485.*max_pixels="):
        load_image(bomb, 8)
    huge = tmp_path / "huge.png.bin"  # beyond twice PIL's limit: PIL refuses it while reading the header
    huge.write_bytes(_bomb_png(60_000, 60_000))
    with pytest.raises(ImageTooLargeError, match=r"more pixels than the limit of 89,478,485 .*max_pixels="):
        load_image(huge, 8)
    (tmp_path / "ok.png").write_bytes(_png_bytes(3))
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        res = load_images(tmp_path, 8)
    assert len(res[0]) == 1 and res.skipped[0].path == bomb and "over the limit" in res.skipped[0].reason
    # the limit is an argument and a module setting; None turns the check off (PIL's own guard still applies)
    with pytest.raises(ImageTooLargeError, match="12x10 = 120 pixels, over the limit of 100"):
        load_image(tmp_path / "ok.png", 8, max_pixels=100)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError, match="--max_pixels="):
        load_image(tmp_path / "ok.png", 8, arg_names={"max_pixels": "--max_pixels"})
    assert load_image(tmp_path / "ok.png", 8, max_pixels=None).shape == (8, 8, 3)
    with pytest.raises(ImageTooLargeError, match="more pixels than PIL's limit"):
        load_image(huge, 8, max_pixels=None)  # PIL's DecompressionBombError, as our error
    assert issubclass(ImageTooLargeError, ImageDecodeError) and issubclass(ImageTooLargeError, MLLError)
