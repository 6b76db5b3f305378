"""Tiny DICOM files written with pydicom for the decoder, source and predict tests (one writer, many shapes)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dx_dataset(**tags: object) -> Dataset:
    """A DX secondary-capture dataset with its file meta and ``tags``, still without pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def set_pixels(
    ds: Dataset, arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None
) -> None:
    """Store unsigned grayscale ``arr`` (``[H, W]`` or ``[frames, H, W]``) uncompressed in ``ds``."""
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
