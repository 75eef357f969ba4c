"""Write small synthetic 16-bit CXR DICOM files with pydicom (tests and the committed fixture).

Run ``python tests/dicom_fixtures.py`` to regenerate ``fixtures/synthetic_cxr_mono1.dcm``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import synthetic_cxr
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    patient_id: str = "SYNTH0001",
    syntax: UID = ExplicitVRLittleEndian,
) -> Path:
    """Write ``pixels`` (uint16 [H, W], or [frames, H, W]) as a 16-bit DICOM with optional window
    and rescale, in transfer syntax ``syntax`` (e.g. deflated explicit VR)."""
    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_colour_dicom(path: str | Path, rgb: np.ndarray, photometric: str = "RGB") -> Path:
    """Write ``rgb`` (uint8 [H, W, 3]) as an 8-bit colour DICOM stored as ``photometric`` ("RGB",
    or "YBR_FULL": the values converted with pydicom, as JPEG-derived files store them)."""
    from pydicom.pixels import convert_color_space

    path = Path(path)
    stored = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)
    write_dicom(path, np.zeros(rgb.shape[:2], np.uint16))  # header fields, replaced below
    from pydicom import dcmread

    ds = dcmread(path)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_pixels(size: int = 64, seed: int = 0) -> np.ndarray:
    """The conftest synthetic CXR as uint16 using 12 bits (0..4095), as detectors commonly store."""
    return np.round(synthetic_cxr(size, seed) * 4095).astype(np.uint16)


if __name__ == "__main__":
    here = Path(__file__).parent / "fixtures"
    # MONOCHROME1 (dense = dark in the stored values), as many CR detectors write.
    write_dicom(here / "synthetic_cxr_mono1.dcm", 4095 - synthetic_pixels(64), "MONOCHROME1")
