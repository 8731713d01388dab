"""A corpus of DICOM and NIfTI inputs with planted identifying values, and the search that proves none of them
reaches an output.

Deterministic: the same call writes byte-identical files (UIDs are planted, not generated). The planted values are
distinctive made-up strings, so a hit in an output is a leak, not a coincidence.

- `PLANTED_DICOM`: identifying attributes (PS3.15 Basic Profile: names, ids, dates, institution, physicians,
  free-text comments and descriptions, station/device, address/phone), set on every DICOM, plus private tags,
  a sequence item and instance UIDs (`planted_values()` lists them all).
- `PLANTED_NIFTI`: NIfTI-1 header text fields (`descrip`, `aux_file`, `intent_name`, `db_name`) and header
  extensions (comment, AFNI XML, an embedded DICOM with a patient name, a JSON one).
- `needles(value)`: the byte patterns a value may take in an output — UTF-8, Latin-1, UTF-16 LE/BE,
  JSON-escaped, case-insensitively; DICOM person-name components and their usual orders; dates in ISO and
  day/month forms.
- `search_tree(folders, values)`: every file's bytes and every decompressed view (gzip, zip members such as
  .npz, PNG zlib streams) searched for every needle; returns hits and the number of bytes searched.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tests.dicom_factory import md5, write_vindr_tree

# --- what is planted ------------------------------------------------------------------------------------------

PLANTED_DICOM: dict[str, str] = {
    "PatientName": "Qwertyson^Henrietta^Marisol",
    "PatientID": "PID-7781-QXZ",
    "PatientBirthDate": "19431127",
    "StudyDate": "20190314",
    "SeriesDate": "20180722",
    "AcquisitionDate": "20170603",
    "AccessionNumber": "ACC99731ZQ",
    "InstitutionName": "Hospital Zebedee Yarrowfield",
    "InstitutionAddress": "12 Quillfeather Lane Brackenbury",
    "ReferringPhysicianName": "Drummondo^Quimbyella",
    "PerformingPhysicianName": "Fothergill^Anastasius",
    "OperatorsName": "Opperwald^Wilhelmina",
    "OtherPatientIDs": "OPID-55213-VKW",
    "PatientAddress": "77 Juniperwick Crescent",
    "PatientTelephoneNumbers": "+44-20-7946-0321",
    "StudyID": "STUDY-4471-QRX",
    "StationName": "STN-KESTRELX9",
    "DeviceSerialNumber": "SN-88123-PLOVERQ",
    "ImageComments": "patient Zanzibar-Oyelaran consented by phone",
    "StudyDescription": "SCREENING Xylophone-Wardrobe protocol",
    "SeriesDescription": "series Marmaduke-Pelleas left",
    "PatientComments": "allergic per Gwendolyn-Tresco note",
    "AdditionalPatientHistory": "history noted by Ptolemy-Vasquez-Ito",
    "RequestedProcedureDescription": "requested by Isambard-Kettleworth",
}
# UTF-8 encoded names (SpecificCharacterSet ISO_IR 192): non-ASCII must not leak in any encoding either
PLANTED_DICOM_UNICODE: dict[str, str] = {
    "PatientMotherBirthName": "Müllerøster^Zoëlle",
}
PRIVATE_CREATOR = "ACME PHI CORP 1.0"
PLANTED_PRIVATE = {0x01: ("LO", "PRIVATE-Fenwick-Tamsinova"), 0x02: ("UT", "PRIVATE-NOTE Bartholomew-Quince")}
PLANTED_PRIVATE_BLOB = b"BLOB-Gorgonzola-88431"  # inside a private OB element, surrounded by binary
PLANTED_SEQUENCE_PID = "SEQ-PID-31337-WYX"  # OtherPatientIDsSequence item
UID_ROOT = "1.2.826.0.1.3680043.10.999."  # planted instance UIDs start here; outputs must never carry them

PLANTED_NIFTI: dict[str, str] = {
    "descrip": "NIFTI-DESCRIP Pemberton-Isolde",
    "aux_file": "AUX-Thackerayx7",
    "intent_name": "INT-Quorrax",
    "db_name": "DB-Wexfordian",
    "ext_comment": "EXT-COMMENT Ravensworth-Ilsebeth",
    "ext_afni": "AFNI-Hollingbrooke-Ursula",
    "ext_dicom_name": "Embeddedsen^Dicomina",
    "ext_json": "JSON-EXT Castellanos-Priyamvada",
}


def planted_values() -> dict[str, str]:
    """Every planted value, by where it was planted (the count the README cites)."""
    values = {f"dicom:{k}": v for k, v in {**PLANTED_DICOM, **PLANTED_DICOM_UNICODE}.items()}
    values.update({f"dicom:private:{k:#04x}": v for k, (_, v) in PLANTED_PRIVATE.items()})
    values["dicom:private:blob"] = PLANTED_PRIVATE_BLOB.decode()
    values["dicom:OtherPatientIDsSequence"] = PLANTED_SEQUENCE_PID
    values["dicom:instance-uids"] = UID_ROOT.rstrip(".")
    values.update({f"nifti:{k}": v for k, v in PLANTED_NIFTI.items()})
    return values


# --- needles --------------------------------------------------------------------------------------------------

def _text_forms(value: str) -> set[str]:
    forms = {value}
    if "^" in value or "=" in value:  # DICOM PN: family^given^middle^prefix^suffix, groups separated by '='
        parts = [p for group in value.split("=") for p in group.split("^") if p]
        forms.update(p for p in parts if len(p) >= 4)
        if len(parts) >= 2:
            family, given = parts[0], parts[1]
            forms.update({f"{given} {family}", f"{family} {given}", f"{family}, {given}", " ".join(parts)})
    if len(value) == 8 and value.isdigit():  # DICOM DA
        y, m, d = value[:4], value[4:6], value[6:]
        forms.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{y}/{m}/{d}"})
    return forms


def needles(value: str) -> set[bytes]:
    """Byte patterns (lower-cased; the search lower-cases the haystack too) that would reveal `value`."""
    out: set[bytes] = set()
    for form in _text_forms(value):
        for encoding in ("utf-8", "utf-16-le", "utf-16-be", "latin-1"):
            try:
                out.add(form.encode(encoding).lower())
            except UnicodeEncodeError:
                pass
        escaped = json.dumps(form)[1:-1]  # \u00eb for non-ASCII
        out.add(escaped.encode().lower())
    return out


# --- decompressed views of a file -----------------------------------------------------------------------------

MAX_VIEW_BYTES = 256 << 20  # a single decompressed view larger than this is an error of the test, not a leak


def _png_views(data: bytes) -> Iterator[tuple[str, bytes]]:
    pos, idat = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            yield f"png:zTXt:{key.decode('latin-1')}", zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            if rest[:1] == b"\1":
                yield f"png:iTXt:{key.decode('latin-1')}", zlib.decompress(rest[2:].split(b"\0", 2)[-1])
        elif kind == b"iCCP":
            yield "png:iCCP", zlib.decompress(body.partition(b"\0")[2][1:])
    if idat:
        yield "png:IDAT", zlib.decompressobj().decompress(b"".join(idat), MAX_VIEW_BYTES)


def file_views(path: Path) -> Iterator[tuple[str, bytes]]:
    """(view name, bytes): the raw file, then every decompressed layer we know (recursively for zip members)."""
    data = path.read_bytes()
    yield "raw", data
    yield from _decompressed_views(data, depth=0)


def _decompressed_views(data: bytes, depth: int) -> Iterator[tuple[str, bytes]]:
    if depth > 3:
        return
    if data[:2] == b"\x1f\x8b":
        inner = gzip.GzipFile(fileobj=io.BytesIO(data)).read(MAX_VIEW_BYTES)
        yield "gzip", inner
        yield from _decompressed_views(inner, depth + 1)
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.infolist():
                inner = archive.read(member)
                yield f"zip:{member.filename}", inner
                yield from _decompressed_views(inner, depth + 1)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        yield from _png_views(data)


# --- the search -----------------------------------------------------------------------------------------------

@dataclass
class Leak:
    value_name: str
    value: str
    where: str  # file path and view, or "stdout"/"stderr"/"log" of a command
    needle: bytes


@dataclass
class SearchResult:
    leaks: list[Leak] = field(default_factory=list)
    bytes_searched: int = 0
    files_searched: int = 0
    views_searched: int = 0

    def merge(self, other: "SearchResult") -> "SearchResult":
        self.leaks += other.leaks
        self.bytes_searched += other.bytes_searched
        self.files_searched += other.files_searched
        self.views_searched += other.views_searched
        return self

    def describe(self, limit: int = 10) -> str:
        return "\n".join(f"{leak.value_name}={leak.value!r} in {leak.where} (as {leak.needle!r})"
                         for leak in self.leaks[:limit])


def _all_needles(values: dict[str, str]) -> list[tuple[str, str, bytes]]:
    return [(name, value, n) for name, value in values.items() for n in sorted(needles(value))]


def search_bytes(data: bytes, where: str, values: dict[str, str],
                 prepared: list[tuple[str, str, bytes]] | None = None) -> SearchResult:
    haystack = data.lower()
    result = SearchResult(bytes_searched=len(data), views_searched=1)
    reported = set()
    for name, value, needle in prepared or _all_needles(values):
        if name not in reported and needle in haystack:
            result.leaks.append(Leak(name, value, where, needle))
            reported.add(name)
    return result


def every_file(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        if Path(folder).is_file():
            yield Path(folder)
            continue
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path


def search_tree(folders: Iterable[Path], values: dict[str, str]) -> SearchResult:
    """Search every byte (and decompressed view) of every file under `folders` for every planted value."""
    prepared = _all_needles(values)
    total = SearchResult()
    for path in every_file(*folders):
        total.files_searched += 1
        for view, data in file_views(path):
            total.merge(search_bytes(data, f"{path} [{view}]", values, prepared))
    return total


def search_text(text: str, where: str, values: dict[str, str]) -> SearchResult:
    return search_bytes(text.encode("utf-8", "surrogateescape"), where, values)


# --- the corpus -----------------------------------------------------------------------------------------------

def _uid(index: int, role: int) -> str:
    return f"{UID_ROOT}{role}.{index}"


def plant_dicom(path: Path, index: int) -> None:
    """Add every planted identifying value to an existing DICOM file (in place), deterministically."""
    ds = pydicom.dcmread(str(path))
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so the non-ASCII values are stored as written
    for keyword, value in {**PLANTED_DICOM, **PLANTED_DICOM_UNICODE}.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
    for offset, (vr, value) in PLANTED_PRIVATE.items():
        block.add_new(offset, vr, value)
    block.add_new(0x03, "OB", b"\x00\x01\x02" + PLANTED_PRIVATE_BLOB + b"\xff\xfe\x00")
    item = Dataset()
    item.PatientID = PLANTED_SEQUENCE_PID
    item.IssuerOfPatientID = "ISSUER-Hargreaves"
    ds.OtherPatientIDsSequence = DicomSequence([item])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(index, 1), _uid(index, 2)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(index, 3)
    ds.save_as(str(path), enforce_file_format=True)


# UIDs that identify an instance (and so, through a PACS, a patient); class and transfer-syntax UIDs are shared
INSTANCE_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID",
                         "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "IrradiationEventUID"}


def corpus_input_uids(folders: Iterable[Path]) -> set[str]:
    uids = set()
    for path in every_file(*folders):
        if path.suffix in (".dcm", ".dicom"):
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            elements = list(ds.iterall()) + list(ds.file_meta)
            uids.update(str(e.value) for e in elements if e.keyword in INSTANCE_UID_KEYWORDS and e.value)
    return uids


def write_planted_vindr(root: Path, n_studies: int = 3, test_studies: Sequence[int] | None = None,
                        lesion_studies: Sequence[int] = (0,)) -> list[dict]:
    """The VinDr layout (tests.dicom_factory) with every DICOM carrying the planted values.

    By default the last study is the test split and study 0's left breast the one lesion (BI-RADS 4, a Mass box);
    `test_studies` / `lesion_studies` move them — `audit run` needs two held-out patients (re-identification)
    and both classes on either side (utility)."""
    rows = write_vindr_tree(root, n_studies=n_studies)
    for index, path in enumerate(sorted(root.rglob("*.dicom"))):
        plant_dicom(path, index)
    if test_studies is not None or tuple(lesion_studies) != (0,):
        rows = _relabel_vindr(root, n_studies, test_studies or (n_studies - 1,), set(lesion_studies))
    return rows


def _relabel_vindr(root: Path, n_studies: int, test_studies: Sequence[int], lesion_studies: set[int]) -> list[dict]:
    index_of = {md5(f"study{s}"): s for s in range(n_studies)}
    breast_rows = []
    for name in ("breast-level_annotations.csv", "finding_annotations.csv"):
        with open(root / name, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames, list(reader)
        for row in rows:
            s = index_of[row["study_id"]]
            row["split"] = "test" if s in test_studies else "training"
            lesion = s in lesion_studies and row["laterality"] == "L"
            row["breast_birads"] = "BI-RADS 4" if lesion else "BI-RADS 1"
            if "finding_categories" in row:
                row.update(finding_categories="['Mass']", finding_birads="BI-RADS 4", xmin=24, ymin=54, xmax=36,
                           ymax=66) if lesion else row.update(finding_categories="['No Finding']", finding_birads="",
                                                              xmin="", ymin="", xmax="", ymax="")
        with open(root / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        if name.startswith("breast"):
            breast_rows = rows
    return breast_rows


def write_planted_dicom_folder(folder: Path, n: int, seed: int, shape=(40, 32)) -> list[Path]:
    """A flat folder of planted DICOMs (images with structure, distinct per seed) — a folder model or a replica
    set made of DICOM files."""
    from tests.dicom_factory import write_dicom
    from tests.image_factory import structured_images

    images = structured_images(n, shape, seed)
    paths = []
    for i, image in enumerate(images):
        path = write_dicom(folder / f"img{i:02d}.dcm", image, laterality="L", view="CC")
        plant_dicom(path, 1000 * (seed + 1) + i)
        paths.append(path)
    return paths


def nifti_with_planted_header(volume: np.ndarray, affine: np.ndarray | None = None):
    import nibabel as nib
    from nibabel.nifti1 import Nifti1DicomExtension, Nifti1Extension

    image = nib.Nifti1Image(volume.astype(np.float32), np.eye(4) if affine is None else affine)
    header = image.header
    for key in ("descrip", "aux_file", "intent_name", "db_name"):
        header[key] = PLANTED_NIFTI[key].encode()
    header.extensions.append(Nifti1Extension("comment", PLANTED_NIFTI["ext_comment"].encode()))
    header.extensions.append(Nifti1Extension(
        "afni", f'<?xml version="1.0"?><AFNI_attributes><name>{PLANTED_NIFTI["ext_afni"]}</name>'
                f'</AFNI_attributes>'.encode()))
    embedded = Dataset()
    embedded.PatientName = PLANTED_NIFTI["ext_dicom_name"]
    embedded.PatientID = PLANTED_DICOM["PatientID"]
    header.extensions.append(Nifti1DicomExtension(2, embedded, parent_hdr=header))
    header.extensions.append(Nifti1Extension(
        "mind_ident", json.dumps({"PatientName": PLANTED_NIFTI["ext_json"]}).encode()))
    return image


def write_planted_nifti_dataset(root: Path, patients: int = 3, scans: int = 2, shape=(12, 12, 12)) -> Path:
    """NIfTI volumes with planted header fields + manifest.csv (`id, patient_id, split, path`, one label)."""
    import nibabel as nib
    from tests.image_factory import structured_images

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    volumes = structured_images(patients * scans, shape, seed=7)
    for p in range(patients):
        for s in range(scans):
            rid = f"vol{p}{s}"
            nib.save(nifti_with_planted_header(volumes[p * scans + s] * 1000.0), root / f"{rid}.nii.gz")
            rows.append({"id": rid, "patient_id": f"pat{p}", "split": "test" if p == patients - 1 else "train",
                         "path": f"{rid}.nii.gz", "lesion": str((p + s) % 2)})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


# --- DICOM the suite writes -----------------------------------------------------------------------------------

# Attributes a DICOM written by the suite may carry with a value: structure, acquisition technique, geometry,
# display; plus coarse made-up demographics of phantoms (sex, age in years). Everything else must be absent or
# empty, and no UID may come from an input file.
ALLOWED_WRITTEN_TAGS = {
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "PresentationIntentType", "Manufacturer", "ManufacturerModelName",
    "PatientSex", "PatientAge", "BodyPartExamined", "ImagerPixelSpacing", "ViewPosition", "SeriesNumber",
    "InstanceNumber", "PatientOrientation", "Laterality", "ImageLaterality", "SamplesPerPixel",
    "PhotometricInterpretation", "Rows", "Columns", "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "PixelPaddingValue", "PixelPaddingRangeLimit", "BurnedInAnnotation", "WindowCenter",
    "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType", "VOILUTFunction", "PixelData",
    "NumberOfFrames", "SliceThickness", "KVP", "Exposure", "LossyImageCompression",
}


def written_dicom_problems(folders: Iterable[Path], input_uids: set[str]) -> tuple[int, list[str]]:
    """(DICOM files found, problems) for every DICOM file under `folders` (found by content, not by name)."""
    problems, count = [], 0
    for path in every_file(*folders):
        with open(path, "rb") as fh:
            head = fh.read(132)
        if head[128:132] != b"DICM":
            continue
        count += 1
        ds = pydicom.dcmread(str(path), stop_before_pixels=False)
        for element in ds.iterall():
            if element.tag.is_private:
                problems.append(f"{path}: private tag {element.tag}")
            elif element.VR == "UI" and str(element.value) in input_uids:
                problems.append(f"{path}: {element.keyword} copies an input UID")
            elif element.keyword not in ALLOWED_WRITTEN_TAGS and not element.is_empty:
                problems.append(f"{path}: non-technical {element.keyword or element.tag} = {str(element.value)[:40]!r}")
        for element in ds.file_meta:
            if element.VR == "UI" and str(element.value) in input_uids:
                problems.append(f"{path}: file meta {element.keyword} copies an input UID")
    return count, problems
