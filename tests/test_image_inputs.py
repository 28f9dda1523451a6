"""What the model sees: images decoded upright (EXIF), 16-bit scaled, transparency composited; the
Python API's image and batch types; decompression bombs refused before decoding."""

import pathlib
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fisa_rt import InputError
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime.segmenter import Segmenter

SIDE = 128  # the embedded model's input size: images with this longer side reach the model unresized


def png(path, width, height, bit_depth, colour_type, rows=b"") -> pathlib.Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB, nor claim a size it does not hold)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def rows_of(array: np.ndarray) -> bytes:
    """PNG scanlines (filter 0) of a big-endian array (H, W) or (H, W, C)."""
    data = array.astype(">u2" if array.dtype == np.uint16 else np.uint8)
    return b"".join(b"\x00" + row.tobytes() for row in data)


@pytest.fixture(scope="module")
def segmenter():
    segmenter = Segmenter.from_engine(default_checkpoint(), backend="torch", cache_dir="")
    segmenter.set_vocabulary(["red star", "wavy wall"])
    seen = []
    run = segmenter.backend.run

    def recording_run(images, text, seen_in_training=None):
        seen.append(images.cpu().numpy())
        return run(images, text, seen_in_training)

    segmenter.backend.run = recording_run
    segmenter.seen = seen
    return segmenter


def model_input(segmenter, image) -> np.ndarray:
    """The (h, w, 3) uint8 content of the canvas the backend received for ``image``."""
    result = segmenter.segment(image, task="semantic")
    h, w = result.image.shape[:2]
    assert max(h, w) == SIDE
    return segmenter.seen[-1][0].transpose(1, 2, 0)[:h, :w]


def test_exif_orientation_is_applied(segmenter, tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (64, SIDE, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones write portrait photos
    Image.fromarray(raw).save(tmp_path / "phone.png", exif=exif)
    upright = np.rot90(raw, k=-1)
    np.testing.assert_array_equal(model_input(segmenter, str(tmp_path / "phone.png")), upright)


def test_a_callers_pil_image_is_turned_upright_but_left_as_it_was(segmenter, tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (64, SIDE, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    from_file = model_input(segmenter, str(tmp_path / "phone.jpg"))
    with Image.open(tmp_path / "phone.jpg") as im:
        # upright as from the file, pixel for pixel (a rotation the other way gave the same shape)
        np.testing.assert_array_equal(model_input(segmenter, im), from_file)
        assert im.size == (SIDE, 64) and im.getexif()[0x0112] == 6  # the caller's image is unchanged


def test_a_float_image_is_refused_not_read_as_black(segmenter, tmp_path):
    Image.fromarray(np.full((32, 32), 0.5, np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(InputError, match=r"f.tiff is 32-bit float \(PIL mode F\)"):
        model_input(segmenter, str(tmp_path / "f.tiff"))


def test_16_bit_grayscale_and_rgb_are_scaled_not_saturated(segmenter, tmp_path):
    gray = np.random.default_rng(1).integers(0, 65536, (SIDE, 96), dtype=np.uint16)
    seen = model_input(segmenter, str(png(tmp_path / "gray16.png", 96, SIDE, 16, 0, rows_of(gray))))
    assert seen.std() > 20  # not saturated to white
    # fisa-rt's own scaling, exact (>> 8 is off by one on a quarter of the values); 16-bit RGB is Pillow's: +-1
    np.testing.assert_array_equal(seen, np.repeat(np.round(gray / 257.0)[..., None], 3, 2))
    rgb = np.random.default_rng(2).integers(0, 65536, (96, SIDE, 3), dtype=np.uint16)
    seen = model_input(segmenter, str(png(tmp_path / "rgb16.png", SIDE, 96, 16, 2, rows_of(rgb))))
    assert np.abs(seen.astype(np.int16) - np.round(rgb / 257.0)).max() <= 1


def test_transparency_is_composited_over_white(segmenter, tmp_path):
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)  # transparent black: shown white by a viewer
    rgba[:64, :, :] = (200, 30, 30, 255)  # opaque red
    rgba[64:96, :, :] = (0, 0, 255, 128)  # half-transparent blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    seen = model_input(segmenter, str(tmp_path / "cutout.png")).astype(np.int16)
    assert (seen[:64] == (200, 30, 30)).all()
    half = np.array([255 * 127 / 255, 255 * 127 / 255, 255])  # blue over white at alpha 128/255
    assert np.abs(seen[64:96] - np.round(half)).max() <= 1
    assert (seen[96:] == 255).all()
    palette = Image.fromarray(np.zeros((SIDE, SIDE), np.uint8), "P")  # index 0 transparent
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    assert (model_input(segmenter, str(tmp_path / "palette.png")) == 255).all()


def test_api_accepts_paths_and_pil_images_and_refuses_the_rest(segmenter):
    scene = sample_images()[0]
    by_path = segmenter.segment(pathlib.Path(scene), task="semantic").semantic
    with Image.open(scene) as im:
        np.testing.assert_array_equal(segmenter.segment(im, task="semantic").semantic, by_path)
    assert segmenter.segment_batch([]) == []
    for bad, message in [
        (None, "NoneType"),
        (np.zeros((0, 0, 3), np.uint8), "H, W >= 1"),
        (np.zeros((8, 8), np.uint8), "(H, W, 3)"),
        (3.5, "float"),
        (scene + ".missing", "does not exist"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            segmenter.segment(bad)
    with pytest.raises(InputError, match="list of images"):
        segmenter.segment_batch(scene)
    assert isinstance(Segmenter.from_engine(pathlib.Path(default_checkpoint()), backend="torch"), Segmenter)
    with pytest.raises(InputError, match="engine must be a path"):
        Segmenter.from_engine(None)
    # "no" is a true value: it turned compilation on; an int cache folder failed in posixpath at set_vocabulary
    for options, message in (({"compile": "no"}, "compile must be True or False; got 'no'"),
                              ({"cuda_graphs": "yes"}, "cuda_graphs must be True or False (or None: on CUDA)"),
                              ({"cache_dir": 3}, "cache_dir must be a path; got int"),
                              ({"device": "meta"}, "device 'meta': fisa-rt runs on cpu, cuda or cuda:N")):
        with pytest.raises(InputError, match=re.escape(message)):
            Segmenter.from_engine(default_checkpoint(), **options)


def test_decompression_bombs_are_refused_before_decoding(segmenter, tmp_path):
    bomb = png(tmp_path / "bomb.png", 20000, 20000, 1, 0, b"\x00" * 2501)
    with pytest.raises(InputError, match="20000x20000 = 400,000,000 pixels, more than the limit of 100,000,000"):
        load_image(str(bomb))
    with pytest.raises(InputError, match="more than the limit"):
        segmenter.segment(str(bomb))
    assert load_image(sample_images()[0], max_pixels=128 * 128).shape == (128, 128, 3)
    with pytest.raises(InputError, match="more than the limit of 16,383"):
        load_image(sample_images()[0], max_pixels=128 * 128 - 1)


def test_32_bit_integer_images_beyond_16_bits_are_refused_not_clipped(segmenter, tmp_path):
    wide = np.random.default_rng(3).integers(0, 65536, (SIDE, 96)).astype(np.int32)
    seen = model_input(segmenter, Image.fromarray(wide))  # mode I holding 16-bit values: read as 16-bit
    np.testing.assert_array_equal(seen[..., 0], np.round(wide / 257.0))
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "deep.tiff")
    with pytest.raises(InputError, match=r"deep.tiff is 32-bit integer \(PIL mode I\) with values 70000..70000, "
                                         r"outside the 16-bit range 0..65535"):
        segmenter.segment(str(tmp_path / "deep.tiff"))
    with pytest.raises(InputError, match=r"values -5..0, outside the 16-bit range 0..65535"):
        segmenter.segment(Image.fromarray(np.array([[-5, 0]], np.int32)))


def test_a_pil_image_past_the_pixel_limit_is_refused(segmenter):
    from fisa_rt.runtime.images import picture_of

    with pytest.raises(InputError, match="more than the limit of 16,383"):
        picture_of(Image.new("RGB", (SIDE, SIDE)), SIDE * SIDE - 1)
    limit, segmenter.max_pixels = segmenter.max_pixels, 1000
    try:
        with pytest.raises(InputError, match="given as a PIL.Image is 128x128"):
            segmenter.segment(Image.new("RGB", (SIDE, SIDE)))
    finally:
        segmenter.max_pixels = limit


def test_premultiplied_and_closed_pil_images(segmenter):
    premultiplied = Image.new("La", (SIDE, SIDE), (100, 128))  # 199 at alpha 128 once unpremultiplied
    over_white = round(199 * 128 / 255 + 255 * 127 / 255)
    assert np.abs(model_input(segmenter, premultiplied).astype(int) - over_white).max() <= 1
    closed = Image.open(sample_images()[0])
    closed.close()
    with pytest.raises(InputError, match="cannot read the image given as a PIL.Image: Operation on closed image"):
        segmenter.segment(closed)


def test_a_bad_pixel_limit_is_refused_when_set_and_a_bad_batch_item_is_named(segmenter):
    for bad in ("x", -1, True, 1.5):
        with pytest.raises(InputError, match=r"max_pixels must be an integer >= 0 \(0 or None: no limit\)"):
            segmenter.max_pixels = bad
        with pytest.raises(InputError, match="max_pixels must be an integer >= 0"):
            load_image(sample_images()[0], max_pixels=bad)
    assert segmenter.max_pixels == 100_000_000  # unchanged by the refused settings
    scene = load_image(sample_images()[0])
    with pytest.raises(InputError, match=r"^images\[2\]: image must be \(H, W, 3\) uint8"):
        segmenter.segment_batch([scene, scene, scene[:, :, 0]])
