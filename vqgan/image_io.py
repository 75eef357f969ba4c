"""Read chest X-rays (PNG, JPEG, DICOM) into one-channel float arrays and prepare model inputs.

Every reader returns ``float32 [H, W]`` in ``[0, 1]`` with bright = dense (bone white), whatever
the file stored, so the tokenizer and the clinical classifier see one convention.
Bad input raises :class:`CXRReadError`, whose message names the path and the reason.

Files come from users and uploads, so a :class:`PixelBudget` is checked against the header before
any pixel is decoded: a few hundred kB of PNG or deflated DICOM can otherwise ask for gigabytes.
"""

from __future__ import annotations

import copy
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileMetaDataset

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES

MIN_SIDE = 32
"""Smaller images cannot be a usable radiograph (and break f=16 encoders at 256 px)."""

RASTER_FORMATS = ("PNG", "JPEG")
"""Pillow decoders tried on a raster: others (TIFF, EPS, ...) are refused even when the content
would match them, whatever the file name says."""

_MIN_CONTRAST = 1e-6
_COLOUR_WARN_LEVEL = 0.05  # mean |channel - gray| in [0, 1] above which we say it is colour


@dataclass(frozen=True)
class PixelBudget:
    """The largest image :func:`read_cxr` decodes, checked from the header before decoding.

    The defaults are generous for real radiographs (a 4,000 x 5,000 detector image is 20 MP; the
    largest CR plates are ~7,000 px a side) and refuse what no CXR is: a 32 x 2,000,000 strip or a
    header claiming 60,000 x 60,000 pixels.
    """

    max_pixels: int = 50_000_000
    """Rows x columns of the (first) frame."""
    max_aspect: float = 5.0
    """Longer side over shorter side."""

    def __post_init__(self) -> None:
        if self.max_pixels < MIN_SIDE * MIN_SIDE or self.max_aspect < 1:
            raise ValueError(f"unusable pixel budget {self}")

    @property
    def max_inflated_bytes(self) -> int:
        """Most bytes a deflated DICOM may inflate to: one frame of 32-bit samples plus header."""
        return 4 * self.max_pixels + (1 << 20)

    def check(self, path: str | Path, height: int, width: int) -> None:
        """Raise :class:`CXRReadError` if a ``height x width`` image is over the budget."""
        if height < 1 or width < 1:
            raise CXRReadError(path, f"image has no pixels ({height}x{width})")
        if height * width > self.max_pixels:
            raise CXRReadError(
                path,
                f"image too large ({height}x{width} = {height * width:,} pixels; "
                f"the limit is {self.max_pixels:,})",
            )
        if max(height, width) > self.max_aspect * min(height, width):
            raise CXRReadError(
                path,
                f"implausible shape for a chest X-ray ({height}x{width}; "
                f"aspect ratio above {self.max_aspect:g})",
            )


DEFAULT_BUDGET = PixelBudget()


class CXRReadError(ValueError):
    """An image file that cannot be used as a chest X-ray; ``str(err)`` is
    ``"<path>: <reason>"``."""

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


def read_cxr(path: str | Path, budget: PixelBudget = DEFAULT_BUDGET) -> np.ndarray:
    """Read a PNG, JPEG or DICOM chest X-ray as ``float32 [H, W]`` in ``[0, 1]``.

    8-bit rasters are divided by 255 (so an 8-bit file round-trips exactly); 16-bit rasters and
    DICOM pixel data are scaled by their actual range. DICOM gets the modality LUT, then the
    VOI LUT or window, and MONOCHROME1 is inverted; of a multi-frame DICOM only frame 0 is decoded.
    Colour rasters are converted to gray. Images over ``budget`` are refused before decoding.
    """
    path = Path(path)
    if not path.is_file():
        raise CXRReadError(path, "file not found" if not path.exists() else "not a regular file")
    array = _read_dicom(path, budget) if is_dicom(path) else _read_raster(path, budget)
    return _validate(path, array)


def _read_raster(path: Path, budget: PixelBudget) -> np.ndarray:
    try:
        with Image.open(path, formats=RASTER_FORMATS) as image:
            budget.check(path, image.height, image.width)
            image.load()  # PIL decodes lazily: force it so truncation surfaces here
            image = ImageOps.exif_transpose(image)
            return _raster_to_unit(path, image)
    except UnidentifiedImageError:
        raise CXRReadError(
            path, "not a readable image (PNG, JPEG or DICOM only; unknown or unsupported format)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, CXRReadError):
            raise
        raise CXRReadError(path, f"corrupt or truncated image ({err})") from err


def _raster_to_unit(path: Path, image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale_by_range(path, np.asarray(image, dtype=np.float32))
    if mode != "L":
        if mode not in ("1", "P", "LA", "PA", "La"):
            _warn_if_colour(path, image)
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _warn_if_colour(path: Path, image: Image.Image) -> None:
    """Colour input is accepted (screenshots, figures) but it is unusual for a radiograph.

    Measured on a copy reduced to ~512 px: a full-size float RGB copy would need 12 bytes a pixel.
    """
    factor = max(1, max(image.size) // 512)
    small = image.reduce(factor) if factor > 1 else image
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0
    spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
    if spread > _COLOUR_WARN_LEVEL:
        logger.warning(
            "%s: colour image (mean channel spread %.3f); converted to gray", path, spread
        )


def _read_dicom(path: Path, budget: PixelBudget) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    with path.open("rb") as handle:
        source, header = _dicom_header(path, handle, budget)
        _check_dicom_header(path, header, budget)
        syntax = header.file_meta.get("TransferSyntaxUID") or _guessed_syntax(header)
        try:
            pixels = pixel_array(source, index=0, transfer_syntax_uid=syntax)  # frame 0 only
        except Exception as err:  # decoder errors vary by transfer syntax
            raise CXRReadError(path, f"cannot decode DICOM pixel data ({err})") from err

    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(header.get("SamplesPerPixel", 1) or 1) > 1:
        logger.warning("%s: colour DICOM (%s); converted to gray", path, photometric)
        gray = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return _scale_by_range(path, gray)  # pixel_array already converted YBR to RGB

    try:
        values = apply_voi_lut(apply_modality_lut(pixels, header), header)
    except Exception as err:
        raise CXRReadError(path, f"invalid DICOM LUT or window ({err})") from err
    unit = _scale_by_range(path, np.asarray(values, dtype=np.float32))
    if photometric == "MONOCHROME1":  # low values are white: flip so bone is bright
        unit = 1.0 - unit
    return unit


def _dicom_header(path: Path, handle: BinaryIO, budget: PixelBudget) -> tuple[BinaryIO, Dataset]:
    """``(source, header)``: the stream to decode pixels from and the dataset up to the pixels.

    A deflated DICOM is inflated here, to at most ``budget.max_inflated_bytes`` (pydicom would
    inflate all of it in memory), into an equivalent explicit-VR stream.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    source: BinaryIO = handle
    try:
        try:
            read_preamble(handle, False)
            meta = _read_file_meta_info(handle)
        except InvalidDicomError:
            meta = None  # a .dcm name without the 128-byte preamble: read it leniently
        if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            source = _inflated_dicom(path, handle, meta, budget)
        source.seek(0)
        header = pydicom.dcmread(source, stop_before_pixels=True, force=meta is None)
    except CXRReadError:
        raise
    except Exception as err:  # pydicom raises many types on garbage
        raise CXRReadError(path, f"not a readable DICOM file ({err})") from err
    source.seek(0)
    return source, header


def _inflated_dicom(
    path: Path, handle: BinaryIO, meta: FileMetaDataset, budget: PixelBudget
) -> BinaryIO:
    """The deflated dataset after the file meta (where ``handle`` stands), inflated under the
    budget, as a plain explicit-VR little-endian Part 10 stream."""
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    limit = budget.max_inflated_bytes
    body = bytearray()
    while chunk := handle.read(1 << 20):
        body += inflater.decompress(chunk, limit + 1 - len(body))
        if len(body) > limit or inflater.unconsumed_tail:
            raise CXRReadError(
                path,
                f"deflated DICOM inflates to more than {limit:,} bytes (over the pixel budget)",
            )
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    meta = copy.deepcopy(meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_file_meta_info(out, meta, enforce_standard=False)
    out.write(body)
    return out


def _check_dicom_header(path: Path, header: Dataset, budget: PixelBudget) -> None:
    """Refuse what cannot be decoded or would not fit, before a pixel is read."""
    if "PixelData" not in header and "Rows" not in header:
        raise CXRReadError(path, "DICOM has no pixel data")
    try:
        rows, cols = int(header.Rows), int(header.Columns)
        bits = int(header.get("BitsAllocated", 16) or 16)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise CXRReadError(path, f"DICOM image header is missing or invalid ({err})") from err
    if bits not in (1, 8, 16, 32) or samples not in (1, 3) or frames < 1:
        raise CXRReadError(
            path,
            f"unsupported DICOM pixel layout (BitsAllocated {bits}, SamplesPerPixel {samples}, "
            f"NumberOfFrames {frames})",
        )
    budget.check(path, rows, cols)
    if frames > 1:
        logger.warning("%s: multi-frame DICOM (%d frames); using the first", path, frames)


def _guessed_syntax(header: Dataset) -> str:
    """The transfer syntax of a DICOM without file meta, from how pydicom read its header."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, _little = header.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


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
    """Centre-crop to a square, then resize it to ``size`` (antialiased bilinear):
    ``[1, size, size]``.

    Input is ``[H, W]`` in ``[0, 1]`` (as from :func:`read_cxr`); output stays in ``[0, 1]``.
    Cropping first keeps the work and memory at ``min(H, W)**2`` pixels: scaling the shorter side
    first would turn a thin strip into a huge tensor.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if array.ndim != 2:
        raise ValueError(f"prepare_image expects a 2-D [H, W] array, got shape {array.shape}")
    # Plain torch (not torchvision) keeps this import light for the inference path.
    height, width = array.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = array[top : top + side, left : left + side]
    image = torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))[
        None, None
    ]  # [1,1,S,S]
    if side != size:
        image = F.interpolate(
            image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return image[0].clamp(0.0, 1.0)  # [1, size, size]; not in place: it may view `array`


def load_cxr_tensor(
    path: str | Path, size: int, budget: PixelBudget = DEFAULT_BUDGET
) -> torch.Tensor:
    """``prepare_image(read_cxr(path, budget), size)``: a ready ``[1, size, size]`` model input."""
    return prepare_image(read_cxr(path, budget), size)


def match_histogram(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` (``[H, W]`` in ``[0, 1]``) with its pixels mapped onto ``reference``'s intensity
    histogram, rank for rank (`skimage.exposure.match_histograms`): the same spatial pattern with
    another film's brightness and contrast. ``float32`` in ``[0, 1]``.

    Why: the labelled CXR sets here take their normal and abnormal films from different
    hospitals, whose histograms differ, so a model can read the label from the histogram alone
    (benchmarks/results/intensity_shortcut/). Swapping histograms tests and trains that away."""
    from skimage.exposure import match_histograms

    if image.ndim != 2 or reference.ndim != 2:
        raise ValueError(
            f"match_histogram expects 2-D [H, W] arrays, got {image.shape} and {reference.shape}"
        )
    matched = match_histograms(np.asarray(image, np.float32), np.asarray(reference, np.float32))
    return np.clip(matched, 0.0, 1.0).astype(np.float32)
