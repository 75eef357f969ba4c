"""Read chest X-rays (PNG, JPEG, DICOM) into one-channel float arrays and prepare model inputs.

Every reader returns ``float32 [H, W]`` in ``[0, 1]`` with bright = dense (bone white), whatever
the file stored, so the tokenizer and the clinical classifier see one convention.
Bad input raises :class:`CXRReadError`, whose message names the path and the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES

MIN_SIDE = 32
"""Smaller images cannot be a usable radiograph (and break f=16 encoders at 256 px)."""

_MIN_CONTRAST = 1e-6
_COLOUR_WARN_LEVEL = 0.05  # mean |channel - gray| in [0, 1] above which we say it is colour


class CXRReadError(ValueError):
    """An image file that cannot be used as a chest X-ray; ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        reason = " ".join(reason.split())  # one line, even when a decoder's message has several
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file carrying the ``DICM`` preamble marker."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_cxr(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or DICOM chest X-ray as ``float32 [H, W]`` in ``[0, 1]``.

    8-bit rasters are divided by 255 (so an 8-bit file round-trips exactly); 16-bit rasters and
    DICOM pixel data are scaled by their actual range. DICOM gets the modality LUT, then the
    VOI LUT or window, and MONOCHROME1 is inverted. Colour rasters are converted to gray.
    """
    path = Path(path)
    if not path.is_file():
        raise CXRReadError(path, "file not found" if not path.exists() else "not a regular file")
    array = _read_dicom(path) if is_dicom(path) else _read_raster(path)
    return _validate(path, array)


def _read_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()  # PIL decodes lazily: force it so truncation surfaces here
            image = ImageOps.exif_transpose(image)
            return _raster_to_unit(path, image)
    except UnidentifiedImageError:
        raise CXRReadError(path, "not a readable image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, CXRReadError):
            raise
        raise CXRReadError(path, f"corrupt or truncated image ({err})") from err


def _raster_to_unit(path: Path, image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale_by_range(path, np.asarray(image, dtype=np.float64))
    if mode != "L":
        if mode not in ("1", "P", "LA", "PA", "La"):
            _warn_if_colour(path, image)
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _warn_if_colour(path: Path, image: Image.Image) -> None:
    """Colour input is accepted (screenshots, figures) but it is unusual for a radiograph."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
    if spread > _COLOUR_WARN_LEVEL:
        logger.warning(
            "%s: colour image (mean channel spread %.3f); converted to gray", path, spread
        )


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        # A .dcm name without the 128-byte preamble: retry leniently before giving up.
        try:
            dataset = pydicom.dcmread(path, force=True)
        except Exception as err:  # pydicom raises many types on garbage
            raise CXRReadError(path, f"not a readable DICOM file ({err})") from err
    except Exception as err:
        raise CXRReadError(path, f"truncated or corrupt DICOM ({err})") from err

    if "PixelData" not in dataset:
        raise CXRReadError(path, "DICOM has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as err:  # decoder errors vary by transfer syntax
        raise CXRReadError(path, f"cannot decode DICOM pixel data ({err})") from err

    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.warning("%s: multi-frame DICOM (%d frames); using the first", path, frames)
        pixels = pixels[0]
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(dataset, "SamplesPerPixel", 1)) > 1:
        logger.warning("%s: colour DICOM (%s); converted to gray", path, photometric)
        from pydicom.pixels import convert_color_space

        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        gray = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _scale_by_range(path, gray)

    try:
        values = apply_modality_lut(pixels, dataset)
        values = apply_voi_lut(values, dataset)
    except Exception as err:
        raise CXRReadError(path, f"invalid DICOM LUT or window ({err})") from err
    unit = _scale_by_range(path, np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":  # low values are white: flip so bone is bright
        unit = 1.0 - unit
    return unit


def _scale_by_range(path: Path, values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise CXRReadError(path, "image has non-finite pixel values")
    low, high = float(values.min()), float(values.max())
    if high - low <= _MIN_CONTRAST:
        raise CXRReadError(path, f"image is constant (all pixels {low:g})")
    return ((values - low) / (high - low)).astype(np.float32)


def _validate(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2:
        raise CXRReadError(path, f"expected a 2-D image, got shape {tuple(array.shape)}")
    height, width = array.shape
    if min(height, width) < MIN_SIDE:
        raise CXRReadError(
            path, f"image too small ({height}x{width}; need >= {MIN_SIDE} px a side)"
        )
    if float(array.max() - array.min()) <= _MIN_CONTRAST:
        raise CXRReadError(path, "image is constant (no contrast)")
    return np.ascontiguousarray(array, dtype=np.float32)


def prepare_image(array: np.ndarray, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased bilinear) and centre-crop: ``[1, size, size]``.

    Input is ``[H, W]`` in ``[0, 1]`` (as from :func:`read_cxr`); output stays in ``[0, 1]``.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if array.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D [H, W] array, got shape {array.shape}")
    # Plain torch (not torchvision) keeps this import light for the inference path.
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]  # [1,1,H,W]
    height, width = array.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        image = F.interpolate(
            image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    image = image[0, :, top : top + size, left : left + size]  # [1, size, size]
    return image.clamp_(0.0, 1.0)


def load_cxr_tensor(path: str | Path, size: int) -> torch.Tensor:
    """``prepare_image(read_cxr(path), size)``: a ready ``[1, size, size]`` model input."""
    return prepare_image(read_cxr(path), size)
