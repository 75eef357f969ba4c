"""vqgan.image_io: readers for PNG/JPEG/DICOM, clear errors, and prepare_image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_cxr
from dicom_fixtures import synthetic_pixels, write_colour_dicom, write_dicom
from PIL import Image

from vqgan.image_io import (
    DEFAULT_BUDGET,
    CXRReadError,
    PixelBudget,
    load_cxr_tensor,
    prepare_image,
    read_cxr,
)


def test_reads_real_png_and_jpeg(fixtures_dir: Path) -> None:
    for name in ("00000001_000.png", "16747_3_1.jpg"):
        image = read_cxr(fixtures_dir / name)
        assert image.dtype == np.float32 and image.ndim == 2
        assert 0.0 <= image.min() < image.max() <= 1.0


def test_8bit_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = (synthetic_cxr(64, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_cxr(tmp_path / "a.png"), pixels / np.float32(255))


def test_16bit_png_scaled_by_range(tmp_path: Path) -> None:
    pixels = synthetic_pixels(64).astype(np.uint16) + 100  # 12-bit content in a 16-bit file
    Image.fromarray(pixels).save(tmp_path / "b.png")
    image = read_cxr(tmp_path / "b.png")
    assert image.min() == 0.0 and image.max() == 1.0
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_rgb_converted_to_gray(tmp_path: Path) -> None:
    gray = (synthetic_cxr(64, 2) * 255).round().astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "c.png")
    np.testing.assert_allclose(read_cxr(tmp_path / "c.png"), gray / 255.0, atol=1 / 255)


def test_dicom_16bit_monochrome2_scaled(tmp_path: Path) -> None:
    pixels = synthetic_pixels(64)
    path = write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    image = read_cxr(path)
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = synthetic_pixels(64)
    mono2 = read_cxr(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2"))
    mono1 = read_cxr(write_dicom(tmp_path / "m1.dcm", pixels.max() - pixels, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    lung, body = mono1[32, 19], mono1[32, 2]
    assert body > lung  # bone/soft tissue bright, air dark after inversion


def test_dicom_window_applied(tmp_path: Path) -> None:
    pixels = synthetic_pixels(64)
    narrow = read_cxr(write_dicom(tmp_path / "w.dcm", pixels, window=(1024.0, 400.0)))
    # Everything above centre + width/2 saturates to white under the window.
    assert (narrow == 1.0).mean() > 0.5
    assert (read_cxr(write_dicom(tmp_path / "n.dcm", pixels)) == 1.0).mean() < 0.01


def test_colour_dicom_is_converted_to_gray_once(tmp_path: Path) -> None:
    """pydicom 3 already turns YBR into RGB in `pixel_array`: converting again would skew the
    gray. The same picture stored as RGB and as YBR_FULL must read alike, and as its luminance."""
    gray = np.round(synthetic_cxr(64, 3) * 255)
    tint = np.stack([gray, gray * 0.8, gray * 0.6], axis=-1)  # a coloured picture
    rgb = np.round(tint).astype(np.uint8)
    as_rgb = read_cxr(write_colour_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    as_ybr = read_cxr(write_colour_dicom(tmp_path / "ybr.dcm", rgb, "YBR_FULL"))
    luminance = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    expected = (luminance - luminance.min()) / (luminance.max() - luminance.min())
    assert np.abs(as_rgb - expected).max() < 1e-5
    assert np.abs(as_ybr - expected).max() < 0.02  # YBR storage rounds to 8 bits


def test_dicom_detected_by_preamble_without_extension(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "noext", synthetic_pixels(64), "MONOCHROME2")
    assert read_cxr(path).shape == (64, 64)


def test_committed_dicom_fixture(fixtures_dir: Path) -> None:
    image = read_cxr(fixtures_dir / "synthetic_cxr_mono1.dcm")
    assert image.shape == (64, 64) and image[32, 2] > image[32, 19]


def test_truncated_dicom_names_path(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "full.dcm", synthetic_pixels(64))
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CXRReadError, match="truncated.dcm") as info:
        read_cxr(bad)
    assert isinstance(info.value, ValueError) and info.value.path == str(bad)


def test_corrupt_png_names_path(tmp_path: Path, fixtures_dir: Path) -> None:
    data = (fixtures_dir / "00000001_000.png").read_bytes()
    truncated = tmp_path / "half.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CXRReadError, match="half.png.*(corrupt|truncated)"):
        read_cxr(truncated)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really" + bytes(300))
    with pytest.raises(CXRReadError, match="garbage.png"):
        read_cxr(garbage)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("missing.png", None, "not found"),
        ("tiny.png", lambda: np.random.randint(0, 255, (16, 40), dtype=np.uint8), "too small"),
        ("flat.png", lambda: np.full((64, 64), 7, dtype=np.uint8), "constant"),
    ],
)
def test_bad_inputs_give_clear_errors(tmp_path: Path, name: str, make, reason: str) -> None:
    path = tmp_path / name
    if make is not None:
        Image.fromarray(make()).save(path)
    with pytest.raises(CXRReadError, match=f"{name}: .*{reason}"):
        read_cxr(path)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(CXRReadError, match="notes.jpg: not a readable image"):
        read_cxr(path)


@pytest.mark.parametrize(("shape", "size"), [((100, 60), 32), ((48, 80), 64), ((64, 64), 64)])
def test_prepare_image_shape_and_range(shape: tuple[int, int], size: int) -> None:
    array = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = prepare_image(array, size)
    assert out.shape == (1, size, size) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_prepare_image_centre_crops() -> None:
    array = np.zeros((64, 128), dtype=np.float32)
    array[:, 32:96] = 1.0  # the centre square is white, the side bands black
    out = prepare_image(array, 32)
    # The crop keeps only the white centre (edge columns are softened by the antialias filter).
    assert float(out[..., 1:-1].min()) > 0.99 and float(out.min()) > 0.5


def test_prepare_image_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match="2-D"):
        prepare_image(np.zeros((1, 8, 8), dtype=np.float32), 8)


def test_load_cxr_tensor(fixtures_dir: Path) -> None:
    out = load_cxr_tensor(fixtures_dir / "00027426_000.png", 48)
    assert out.shape == (1, 48, 48)


# ----------------------------------------------------------------------------- hostile inputs
def test_tall_thin_png_is_refused_before_decoding(tmp_path: Path) -> None:
    """32 x 2,000,000 pixels: a few hundred kB on disk, 64 MP decoded, ~15 GiB once scaled."""
    path = tmp_path / "strip.png"
    Image.new("L", (32, 2_000_000), 128).save(path)
    with pytest.raises(CXRReadError, match="strip.png: image too large"):
        read_cxr(path)
    shape = tmp_path / "shape.png"
    Image.fromarray((synthetic_cxr(64) * 255).astype(np.uint8)).resize((40, 400)).save(shape)
    with pytest.raises(CXRReadError, match="shape.png: implausible shape"):
        read_cxr(shape)


def test_pixel_budget_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray((synthetic_cxr(64) * 255).astype(np.uint8)).save(path)
    with pytest.raises(CXRReadError, match="too large"):
        read_cxr(path, PixelBudget(max_pixels=48 * 48))
    assert read_cxr(path, PixelBudget(max_pixels=64 * 64)).shape == (64, 64)


def test_a_4k_by_5k_dicom_fits_the_default_budget() -> None:
    DEFAULT_BUDGET.check("big.dcm", 5000, 4000)  # raises if the default were too tight


def test_only_png_and_jpeg_rasters_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"  # TIFF content under a PNG name: Pillow would read it by content
    Image.fromarray((synthetic_cxr(64) * 255).astype(np.uint8)).save(path, format="TIFF")
    with pytest.raises(CXRReadError, match="scan.png: not a readable image .*PNG, JPEG or DICOM"):
        read_cxr(path)


def test_prepare_image_crops_before_resizing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thin strip must be cropped to a square first, not scaled up to size x (size * 600)."""
    import vqgan.image_io

    sizes = []
    real = vqgan.image_io.F.interpolate

    def spy(image: torch.Tensor, size: tuple[int, int], **kwargs: object) -> torch.Tensor:
        sizes.append((tuple(image.shape[-2:]), tuple(size)))
        return real(image, size=size, **kwargs)

    monkeypatch.setattr(vqgan.image_io.F, "interpolate", spy)
    out = prepare_image(np.random.default_rng(0).random((32, 20_000), dtype=np.float32), 256)
    assert out.shape == (1, 256, 256)
    assert sizes == [((32, 32), (256, 256))]


def test_huge_dicom_header_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    path = write_dicom(tmp_path / "huge.dcm", synthetic_pixels(64))
    dataset = pydicom.dcmread(path)
    dataset.Rows = dataset.Columns = 60_000  # 3.6 GP claimed by a 8 kB file
    dataset.save_as(path)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", _never_decode)
    with pytest.raises(CXRReadError, match="huge.dcm: image too large .*60000x60000"):
        read_cxr(path)


def _never_decode(*args: object, **kwargs: object) -> np.ndarray:
    raise AssertionError("pixel data was decoded although the header is over the budget")


def test_multi_frame_dicom_decodes_frame_zero_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    frames = np.stack([synthetic_pixels(64, seed) for seed in range(3)])
    path = write_dicom(tmp_path / "frames.dcm", frames)
    indices = []
    real = pydicom.pixels.pixel_array

    def spy(src: object, **kwargs: object) -> np.ndarray:
        indices.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    image = read_cxr(path)
    assert indices == [0]
    np.testing.assert_array_equal(image, read_cxr(write_dicom(tmp_path / "f0.dcm", frames[0])))


def test_deflated_dicom_reads_and_a_deflate_bomb_is_bounded(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = synthetic_pixels(64)
    deflated = write_dicom(tmp_path / "d.dcm", pixels, syntax=DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(
        read_cxr(deflated), read_cxr(write_dicom(tmp_path / "plain.dcm", pixels))
    )
    frames = np.zeros((2000, 64, 64), dtype=np.uint16)  # 16 MB of zeros deflate to ~20 kB
    frames[0] = pixels
    bomb = write_dicom(tmp_path / "bomb.dcm", frames, syntax=DeflatedExplicitVRLittleEndian)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(CXRReadError, match="bomb.dcm: deflated DICOM inflates to more than"):
        read_cxr(bomb, PixelBudget(max_pixels=128 * 128))


def test_match_histogram_keeps_the_pattern_and_takes_the_reference_histogram() -> None:
    from vqgan import match_histogram

    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    reference = (rng.random((16, 16)) ** 3).astype(np.float32)  # a darker histogram
    swapped = match_histogram(image, reference)
    assert swapped.shape == image.shape and swapped.dtype == np.float32
    # every pixel takes the reference value of its own rank: same order, the reference's values
    np.testing.assert_array_equal(np.argsort(swapped, axis=None), np.argsort(image, axis=None))
    np.testing.assert_allclose(np.sort(swapped, axis=None), np.sort(reference, axis=None))
    with pytest.raises(ValueError, match="2-D"):
        match_histogram(image[None], reference)
