"""Encoders (PNG, JPEG, DICOM) and the metadata files of the NIH and CheXpert layouts.

Every encoder is deterministic: fixed PNG/JPEG parameters, DICOM files without timestamps and with UIDs
derived from the dataset seed and the image's identity.

DICOM files come in four variants, cycled over the images so decoders meet all of them: 8-bit MONOCHROME2,
8-bit MONOCHROME1 (inverted), 12-bit-in-16 MONOCHROME2 with a rescale intercept and a window, and 16-bit
MONOCHROME1 with a rescale slope and intercept and a window. Each is built so that the standard display
pipeline (rescale, linear VOI window, invert MONOCHROME1) gives back exactly the rendered 8-bit image.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxr_tools.data.labels import CHEXPERT_LABELS, CHEXPERT_META_COLUMNS, NIH_CSV_HEADER, NIH_LABELS, NO_FINDING
from cxr_tools.data.synthetic.plan import PlannedImage, findings_of

if TYPE_CHECKING:
    from pydicom.uid import UID

PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]  # fast (about 1 ms at 256 px) and deterministic
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
DICOM_VARIANTS = ("MONOCHROME2-8", "MONOCHROME1-8", "MONOCHROME2-12", "MONOCHROME1-16")

# NIH finding -> CheXpert observation columns it makes positive.
NIH_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis", "Lung Opacity"),
    "Cardiomegaly": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "Effusion": ("Pleural Effusion",),
    "Infiltration": ("Lung Opacity",),
    "Mass": ("Lung Lesion", "Lung Opacity"),
    "Nodule": ("Lung Lesion",),
    "Pneumonia": ("Pneumonia", "Lung Opacity"),
    "Pneumothorax": ("Pneumothorax",),
    "Consolidation": ("Consolidation", "Lung Opacity"),
    "Edema": ("Edema", "Lung Opacity"),
    "Emphysema": (),
    "Fibrosis": ("Lung Opacity",),
    "Pleural_Thickening": ("Pleural Other",),
    "Hernia": (),
}


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, PNG_PARAMS)
    if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, JPEG_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _uid(seed: int, *keys: object) -> UID:
    """A fixed UID in the ``2.25`` (UUID-derived integer) root, hashed from the seed and the image's identity."""
    digest = hashlib.sha256("/".join(["cxr-tools-synthetic", str(seed), *map(str, keys)]).encode()).digest()
    from pydicom.uid import UID

    return UID(f"2.25.{int.from_bytes(digest[:16], 'big') >> 1}")


def encode_dicom(img: np.ndarray, item: PlannedImage, seed: int, variant: int) -> bytes:
    """A DICOM Digital X-Ray file of ``img`` in one of the :data:`DICOM_VARIANTS` (deterministic bytes)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    spec = item.spec
    size = img.shape[0]
    sop_class = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
    sop_uid = _uid(seed, "image", spec.patient, spec.follow_up)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid(0, "implementation")
    meta.ImplementationVersionName = "CXR_TOOLS_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, "study", spec.patient, spec.follow_up)
    ds.SeriesInstanceUID = _uid(seed, "series", spec.patient, spec.follow_up)
    ds.FrameOfReferenceUID = _uid(seed, "frame", spec.patient)
    ds.Modality = "DX"
    ds.PatientID = f"{spec.patient:08d}"
    ds.PatientName = f"Phantom^{spec.patient:08d}"
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{spec.age:03d}Y"
    ds.ViewPosition = spec.view
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = spec.follow_up + 1
    spacing = float(item.spacing) * max(item.width, item.height) / size
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    name = DICOM_VARIANTS[variant]
    ds.PhotometricInterpretation = name.split("-")[0]
    if variant == 0:
        data, bits = img, 8
    elif variant == 1:
        data, bits = 255 - img, 8
    elif variant == 2:
        data, bits = img.astype(np.uint16) * 16 + 8, 12
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "US"
        ds.WindowCenter, ds.WindowWidth = "1024", "4096"
    else:
        data, bits = (255 - img.astype(np.uint16)) * 257, 16
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "2", "-1000", "US"
        ds.WindowCenter, ds.WindowWidth = "64535", "131071"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    pixels = np.ascontiguousarray(data, dtype=np.uint8 if bits == 8 else "<u2").tobytes()
    ds.PixelData = pixels + b"\0" * (len(pixels) % 2)  # DICOM values have even length
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def nih_csv(items: list[PlannedImage]) -> str:
    """``Data_Entry_2017_v2020.csv``: the real header, 11 fields per row, ``|``-separated findings."""
    lines = [NIH_CSV_HEADER]
    for it in items:
        s = it.spec
        labels = "|".join(findings_of(s)) or NO_FINDING
        name = s.relpath.rsplit("/", 1)[-1]
        lines.append(
            f"{name},{labels},{s.follow_up},{s.patient},{s.age},{s.sex},{s.view},"
            f"{it.width},{it.height},{it.spacing},{it.spacing}"
        )
    return "\n".join(lines) + "\n"


def chexpert_row(item: PlannedImage, path: str, valid: bool, rng: np.random.Generator) -> str:
    """One CheXpert CSV row; train rows carry uncertain (-1.0) and unmentioned (empty) cells like the real file."""
    s = item.spec
    lateral = s.view == "LL"
    positive: set[str] = set()
    for f in findings_of(s):
        positive.update(NIH_TO_CHEXPERT[f])
    if item.devices:
        positive.add("Support Devices")
    pathology = bool(findings_of(s))
    cells = []
    for col in CHEXPERT_LABELS:
        on = not pathology if col == NO_FINDING else col in positive
        if valid:
            cells.append("1.0" if on else "0.0")
        elif on:
            cells.append("-1.0" if (col != NO_FINDING and rng.random() < 0.12) else "1.0")
        elif col == NO_FINDING:
            cells.append("")  # the real train.csv has only 1.0 or empty here
        else:
            r = rng.random()
            cells.append("0.0" if r < 0.15 else ("-1.0" if r < 0.18 else ""))
    meta = [
        path,
        "Male" if s.sex == "M" else "Female",
        str(s.age),
        "Lateral" if lateral else "Frontal",
        "" if lateral else s.view,
    ]
    return ",".join(meta + cells)


def chexpert_header() -> str:
    return ",".join((*CHEXPERT_META_COLUMNS, *CHEXPERT_LABELS))


def label_counts(items: list[PlannedImage]) -> dict[str, int]:
    """Images per NIH finding (NIH order), then ``No Finding``."""
    counts = dict.fromkeys(NIH_LABELS, 0)
    none = 0
    for it in items:
        f = findings_of(it.spec)
        for name in f:
            counts[name] += 1
        none += not f
    counts[NO_FINDING] = none
    return counts
