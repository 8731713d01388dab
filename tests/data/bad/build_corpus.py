"""Builds the bad-input corpus: one small folder per case + `cases.yaml` (what each case is, the command a user
would run on it, the words the one-line error must contain).

    .venv/bin/python -m tests.data.bad.build_corpus [DEST]     # default: this folder

Deterministic (UIDs, seeds and gzip times are fixed), so the committed files can be checked against a rebuild.
Files that would be large, or that depend on a library's version (trained checkpoints, diffusers configs), are
made at test time by a `setup` named in the case instead of being stored; the test runs those setups in its copy.

Placeholders in commands and names: {case} = the case's folder (a copy), {out} = a fresh output folder.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
UID_ROOT = "1.2.826.0.1.3680043.10.997."


@dataclass
class Case:
    id: str
    description: str
    command: list[str]
    words: list[str]  # the error line must contain each (case-insensitive)
    names: list[str] = field(default_factory=lambda: ["{case}"])  # ... and name these (templates)
    build: Callable[[Path], None] | None = None
    setup: str | None = None  # a function of tests.data.bad.setups run on the copy at test time

    def to_yaml(self) -> dict:
        out = {"id": self.id, "description": self.description, "command": self.command, "expect_exit": 2,
               "error_words": self.words, "error_names": self.names}
        if self.setup:
            out["setup"] = self.setup
        return out


# --- small deterministic writers ------------------------------------------------------------------------------

def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def breast(h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.42)) ** 2 + (xx / (w * 0.8)) ** 2 < 1
    return np.clip(np.where(inside, 0.45 + 0.1 * rng.standard_normal((h, w)), 0.0), 0, 1)


def dicom(path: Path, image: np.ndarray, key: str, edit: Callable | None = None, **kwargs) -> Path:
    """tests.dicom_factory.write_dicom with fixed UIDs (so the bytes are reproducible); `edit(ds)` may change
    the dataset before it is saved."""
    import pydicom

    from tests.dicom_factory import write_dicom

    write_dicom(path, image, **kwargs)
    ds = pydicom.dcmread(str(path))
    n = _seed(key)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}1.{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}2.{n}", f"{UID_ROOT}3.{n}"
    if edit is not None:
        edit(ds)
    ds.save_as(str(path), enforce_file_format=False)
    return path


BREAST_HEADER = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                 "breast_birads", "breast_density", "split"]
FINDING_HEADER = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax",
                  "ymax", "split"]


def vindr_rows() -> list[dict]:
    rows = []
    for s, split in ((0, "training"), (1, "test")):
        for lat in ("L", "R"):
            rows.append({"study_id": f"study{s}", "series_id": f"series{s}{lat}", "image_id": f"img{s}{lat}",
                         "laterality": lat, "view_position": "CC", "height": 24, "width": 20,
                         "breast_birads": "BI-RADS 2", "breast_density": "DENSITY B", "split": split})
    return rows


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def vindr(root: Path, rows: list[dict] | None = None, findings: list[dict] | None = None,
          image_edits: dict[str, Callable] | None = None, skip_images: tuple[str, ...] = (),
          header: list[str] | None = None) -> None:
    """A two-study VinDr-layout tree (study0 training, study1 test; L and R CC views) of 24×20 DICOMs."""
    rows = vindr_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    for row in vindr_rows():
        image_id = row["image_id"]
        if image_id in skip_images:
            continue
        att = breast(seed=_seed(image_id) % 1000)
        if row["laterality"] == "R":
            att = att[:, ::-1]
        path = root / "images" / row["study_id"] / f"{image_id}.dicom"
        dicom(path, att, f"{root.name}/{image_id}", (image_edits or {}).get(image_id), laterality=row["laterality"])
    write_csv(root / "breast-level_annotations.csv", header or BREAST_HEADER, rows)
    if findings is None:
        findings = [{**r, "finding_categories": "['No Finding']", "finding_birads": "", "xmin": "", "ymin": "",
                     "xmax": "", "ymax": ""} for r in vindr_rows()]
    write_csv(root / "finding_annotations.csv", FINDING_HEADER, findings)


def png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def png16(path: Path, seed: int, shape=(16, 16)) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    blob = np.exp(-((yy - rng.uniform(4, 12)) ** 2 + (xx - rng.uniform(4, 12)) ** 2) / 12.0)
    return png(path, np.round((0.1 + 0.8 * blob) * 65535).astype(np.uint16))


def folder_sets(case: Path, n: int = 3) -> None:
    """train/holdout/synth folders of 16×16 16-bit PNGs for `audit replicas`."""
    for name, base in (("train", 0), ("holdout", 100), ("synth", 200)):
        for i in range(n):
            png16(case / name / f"{name}{i}.png", base + i)


def nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


def smooth_volume(seed: int, shape=(8, 8, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return (sum(g ** 2 for g in grid) < 0.8) * (100 + 10 * rng.standard_normal(shape))


NIFTI_PRESET = {"name": "bad-nifti", "reader": "nifti", "modality": "MR", "preprocess": {"shape": [8, 8, 8]}}
FOLDER_PRESET = {"name": "bad-folder", "reader": "folder", "preprocess": {"shape": [16, 16]}}


def nifti_set(case: Path, manifest_rows: list[dict] | None = None, volumes: dict[str, np.ndarray] | None = None,
              preset: dict | None = None, header: list[str] | None = None) -> None:
    """Three volumes (two training patients, one test) + manifest.csv + data.yaml."""
    case.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows if manifest_rows is not None else [
        {"id": f"v{i}", "patient_id": f"p{i}", "split": "test" if i == 2 else "train", "path": f"v{i}.nii.gz"}
        for i in range(3)]
    for i in range(3):
        volume = (volumes or {}).get(f"v{i}.nii.gz")
        nifti(case / f"v{i}.nii.gz", smooth_volume(i) if volume is None else volume)
    write_csv(case / "manifest.csv", header or ["id", "patient_id", "split", "path"], rows)
    (case / "data.yaml").write_text(yaml.safe_dump(preset or NIFTI_PRESET, sort_keys=False))


def folder_dataset(case: Path, manifest: str | None = None, extra: dict[str, Callable[[Path], None]] | None = None,
                   preset: dict | None = None) -> None:
    """A folder dataset (reader: folder) of three 16-bit PNGs, optional manifest text, extra files."""
    for i in range(3):
        png16(case / f"a{i}.png", 300 + i)
    for name, write in (extra or {}).items():
        write(case / name)
    if manifest is not None:
        (case / "manifest.csv").write_text(manifest)
    (case / "data.yaml").write_text(yaml.safe_dump(preset or FOLDER_PRESET, sort_keys=False))


def run_world(case: Path, n_train: int = 6, n_test: int = 4, model: dict[str, Callable[[Path], None]] | None = None,
              gates: str | None = None, config: str | None = None) -> None:
    """What `audit run` takes: a labelled folder dataset (`data/`, 2 images per patient, train and test splits,
    `data.yaml`), a folder model of 16×16 synthetic images (`model/`, or the files `model` writes), and optionally
    `gates.yaml` / `run.yaml` holding the given text."""
    rows = ["file,id,patient_id,split,view,laterality,birads"]
    for i in range(n_train + n_test):
        png16(case / "data" / f"r{i}.png", 400 + i)
        rows.append(f"r{i}.png,r{i},p{i // 2},{'train' if i < n_train else 'test'},{('CC', 'MLO')[i % 2]},L,"
                    f"{1 + i % 2}")
    (case / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    (case / "data.yaml").write_text(yaml.safe_dump({"name": "run-world", "reader": "folder", "manifest": "manifest.csv",
                                                    "preprocess": {"shape": [16, 16]}}, sort_keys=False))
    files = model if model is not None else {f"s{i}.png": (lambda i: lambda p: png16(p, 500 + i))(i) for i in range(6)}
    (case / "model").mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        write(case / "model" / name)
    for name, text in (("gates.yaml", gates), ("run.yaml", config)):
        if text is not None:
            (case / name).write_text(text)


def _volume_world(case: Path) -> None:
    """A 3D folder dataset (8³ volumes, train and test) for a 2D checkpoint made at test time (setups.py)."""
    (case / "volumes").mkdir(parents=True)
    rows = ["file,id,patient_id,split"]
    for i in range(4):
        np.save(case / "volumes" / f"v{i}.npy", smooth_volume(i).astype(np.float32))
        rows.append(f"v{i}.npy,v{i},p{i},{'train' if i < 2 else 'test'}")
    (case / "volumes" / "manifest.csv").write_text("\n".join(rows) + "\n")
    (case / "volumes.yaml").write_text(yaml.safe_dump({"name": "volumes", "reader": "folder", "manifest": "manifest.csv",
                                                       "preprocess": {"shape": [8, 8, 8]}}, sort_keys=False))


def set_row(rows: list[dict], index: int, **changes) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[index].update(changes)
    return rows


# --- commands ----------------------------------------------------------------------------------------------------

VINDR_EXPORT = ["data", "export", "--data", "vindr", "--data-root", "{case}", "--split", "train", "--out", "{out}"]
VINDR_INSPECT = ["data", "inspect", "--data", "vindr", "--data-root", "{case}", "--out", "{out}"]
NIFTI_EXPORT = ["data", "export", "--data", "{case}/data.yaml", "--data-root", "{case}", "--split", "train",
                "--out", "{out}"]
FOLDER_EXPORT = ["data", "export", "--data", "{case}/data.yaml", "--data-root", "{case}", "--split", "all",
                 "--out", "{out}"]
RUN = ["run", "--model", "{case}/model", "--data", "{case}/data.yaml", "--data-root", "{case}/data", "--stages",
       "replicas", "--out", "{out}"]
REPLICAS = ["replicas", "--train", "{case}/train", "--holdout", "{case}/holdout", "--synthetic", "{case}/synth",
            "--out", "{out}"]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _multiframe(ds) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def _no_pixels(ds) -> None:
    del ds.PixelData


def _transfer_syntax(ds) -> None:
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no decoder for a still image
    ds.PixelData = encapsulate([ds.PixelData])


def _rgb(ds) -> None:
    ds.PhotometricInterpretation = "RGB"


def _palette(ds) -> None:
    ds.PhotometricInterpretation = "PALETTE COLOR"


def _no_photometric(ds) -> None:
    del ds.PhotometricInterpretation


def _constant(ds) -> None:
    ds.PixelData = np.full((ds.Rows, ds.Columns), 700, np.uint16).tobytes()


def _bomb(ds) -> None:
    ds.Rows = ds.Columns = 60000


def _rows_larger_than_data(ds) -> None:
    ds.Rows = 200


def _for_processing(ds) -> None:
    ds.PresentationIntentType = "FOR PROCESSING"


def _replace_first_image(case: Path, data: bytes) -> None:
    (case / "images" / "study0" / "img0L.dicom").write_bytes(data)


def _png_as_first_image(case: Path) -> None:
    first = case / "images" / "study0" / "img0L.dicom"
    first.unlink()
    png16(first, 1)


FIRST_DICOM = "{case}/images/study0/img0L.dicom"


def _vindr_then(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(case: Path) -> None:
        vindr(case)
        change(case)
    return build


def _nan_volume() -> np.ndarray:
    v = smooth_volume(5)
    v[2, 3, 4] = np.nan
    return v


def _inf_volume() -> np.ndarray:
    v = smooth_volume(6)
    v[1, 1, 1] = np.inf
    return v


def _npy(values: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        np.save(path, values)
    return write


def _nifti_bomb_file(path: Path) -> None:
    from tests.bombs import nifti_bomb

    nifti_bomb(path)


def _png_bomb(path: Path) -> None:
    from tests.bombs import png_bomb

    png_bomb(path)


def _latin1_csv(case: Path) -> None:
    vindr(case)
    text = (case / "breast-level_annotations.csv").read_text().replace("study0", "stüdy0")
    (case / "breast-level_annotations.csv").write_bytes(text.encode("latin-1"))


def _duplicate_header(case: Path) -> None:
    vindr(case)
    path = case / "breast-level_annotations.csv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("breast_density", "breast_birads")
    path.write_text("\n".join(lines) + "\n")


def _extra_field(case: Path) -> None:
    vindr(case)
    path = case / "breast-level_annotations.csv"
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"
    path.write_text("\n".join(lines) + "\n")


def _short_row(case: Path) -> None:
    vindr(case)
    path = case / "breast-level_annotations.csv"
    lines = path.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:6])
    path.write_text("\n".join(lines) + "\n")


def _findings(**changes) -> list[dict]:
    rows = [{**r, "finding_categories": "['No Finding']", "finding_birads": "", "xmin": "", "ymin": "", "xmax": "",
             "ymax": ""} for r in vindr_rows()]
    rows[0].update(changes)
    return rows


def _config_case(text: str) -> Callable[[Path], None]:
    def build(case: Path) -> None:
        folder_dataset(case)
        (case / "data.yaml").write_text(text)
    return build


def _alias_bomb_text() -> str:
    from tests.malicious import yaml_alias_bomb

    return yaml_alias_bomb()


def _volumes_and_small_images(case: Path) -> None:
    for i in range(5):
        png16(case / "small" / f"small{i}.png", 500 + i)
    for name, base in (("train", 0), ("holdout", 10), ("synth", 20)):
        for i in range(3):
            nifti(case / name / f"{name}{i}.nii.gz", smooth_volume(base + i))


def _conditions_case(text: str) -> Callable[[Path], None]:
    def build(case: Path) -> None:
        for i in range(2):
            png16(case / "model" / f"m{i}.png", 400 + i)
        (case / "conditions.csv").write_text(text)
    return build


GENERATE_WITH_CONDITIONS = ["generate", "--model", "{case}/model", "--n", "2", "--conditions", "{case}/conditions.csv",
                            "--out", "{out}"]


CASES: list[Case] = [
    # --- DICOM files in a VinDr tree (command: audit data export) ---
    Case("dicom-truncated", "a DICOM cut in half (pixel data incomplete)", VINDR_EXPORT,
         ["INCOMPLETE", "truncated"], [FIRST_DICOM],
         _vindr_then(lambda c: _truncate(c / "images/study0/img0L.dicom", 0.6))),
    Case("dicom-zero-bytes", "a zero-byte file with a .dicom name", VINDR_EXPORT, ["INCOMPLETE", "not a DICOM"],
         [FIRST_DICOM], _vindr_then(lambda c: _replace_first_image(c, b""))),
    Case("dicom-is-a-png", "a PNG renamed .dicom", VINDR_EXPORT, ["INCOMPLETE", "not a DICOM"], [FIRST_DICOM],
         _vindr_then(_png_as_first_image)),
    Case("dicom-is-text", "a text file with a .dicom name", VINDR_EXPORT, ["INCOMPLETE", "not a DICOM"],
         [FIRST_DICOM], _vindr_then(lambda c: _replace_first_image(c, b"patient notes, not an image\n" * 8))),
    Case("dicom-missing-pixel-data", "a DICOM header without PixelData", VINDR_EXPORT, ["no pixel data"],
         [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _no_pixels})),
    Case("dicom-unsupported-transfer-syntax", "pixel data in MPEG2 transfer syntax (no decoder for it)",
         VINDR_EXPORT, ["cannot decode pixel data"], [FIRST_DICOM],
         lambda c: vindr(c, image_edits={"img0L": _transfer_syntax})),
    Case("dicom-photometric-rgb", "PhotometricInterpretation RGB on a grey mammogram", VINDR_EXPORT,
         ["unsupported photometric interpretation 'RGB'"], [FIRST_DICOM],
         lambda c: vindr(c, image_edits={"img0L": _rgb})),
    Case("dicom-photometric-palette", "PALETTE COLOR without a palette", VINDR_EXPORT,
         ["unsupported photometric interpretation"], [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _palette})),
    Case("dicom-photometric-missing", "no PhotometricInterpretation", VINDR_EXPORT,
         ["unsupported photometric interpretation 'missing'"], [FIRST_DICOM],
         lambda c: vindr(c, image_edits={"img0L": _no_photometric})),
    Case("dicom-multiframe", "two frames where one 2D image is expected", VINDR_EXPORT, ["single 2D frame"],
         [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _multiframe})),
    Case("dicom-constant-pixels", "every pixel stores the same value (a blank exposure)", VINDR_EXPORT,
         ["same stored value"], [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _constant})),
    Case("dicom-bomb-60000", "Rows = Columns = 60000 with 960 bytes of pixel data", VINDR_EXPORT,
         ["header declares", "60000"], [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _bomb})),
    Case("dicom-rows-beyond-data", "Rows larger than the pixel data holds", VINDR_EXPORT,
         ["cannot decode pixel data"], [FIRST_DICOM], lambda c: vindr(c, image_edits={"img0L": _rows_larger_than_data})),
    Case("dicom-only-for-processing", "every training image is FOR PROCESSING (raw detector data)", VINDR_EXPORT,
         ["no images in split", "train"], [],
         lambda c: vindr(c, image_edits={"img0L": _for_processing, "img0R": _for_processing})),
    # --- VinDr annotation CSVs ---
    Case("vindr-csv-missing", "no breast-level_annotations.csv", VINDR_EXPORT, ["not found"],
         ["{case}/breast-level_annotations.csv"], _vindr_then(lambda c: (c / "breast-level_annotations.csv").unlink())),
    Case("vindr-csv-missing-column", "breast_density column missing", VINDR_EXPORT,
         ["missing column(s): breast_density"], ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, header=[h for h in BREAST_HEADER if h != "breast_density"])),
    Case("vindr-csv-extra-field", "a row with one field more than the header", VINDR_EXPORT,
         ["line 3", "fields where the header has"],
         ["{case}/breast-level_annotations.csv"], _extra_field),
    Case("vindr-csv-short-row", "a row cut after six fields", VINDR_EXPORT, ["line 3", "6 fields"],
         ["{case}/breast-level_annotations.csv"], _short_row),
    Case("vindr-csv-column-twice", "a column named twice in the header", VINDR_EXPORT, ["named twice", "breast_birads"],
         ["{case}/breast-level_annotations.csv"], _duplicate_header),
    Case("vindr-csv-duplicate-image-id", "two rows with one image_id", VINDR_EXPORT, ["duplicate image_id", "line 3"],
         ["{case}/breast-level_annotations.csv"], lambda c: vindr(c, rows=set_row(vindr_rows(), 1, image_id="img0L"))),
    Case("vindr-csv-birads-out-of-range", "breast_birads 'BI-RADS 7'", VINDR_EXPORT, ["breast_birads on line 2"],
         ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, rows=set_row(vindr_rows(), 0, breast_birads="BI-RADS 7"))),
    Case("vindr-csv-birads-two-digits", "breast_birads 'BI-RADS 12' (used to read as 1)", VINDR_EXPORT,
         ["breast_birads on line 2", "BI-RADS 12"], ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, rows=set_row(vindr_rows(), 0, breast_birads="BI-RADS 12"))),
    Case("vindr-csv-bad-density", "breast_density 'DENSITY E'", VINDR_EXPORT, ["breast_density on line 3"],
         ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, rows=set_row(vindr_rows(), 1, breast_density="DENSITY E"))),
    Case("vindr-csv-bad-laterality", "laterality 'X'", VINDR_EXPORT, ["laterality on line 2", "L or R"],
         ["{case}/breast-level_annotations.csv"], lambda c: vindr(c, rows=set_row(vindr_rows(), 0, laterality="X"))),
    Case("vindr-csv-unknown-split", "split 'holdout' (VinDr has training/test)", VINDR_EXPORT,
         ["unknown split", "line 2"], ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, rows=set_row(vindr_rows(), 0, split="holdout"))),
    Case("vindr-csv-not-utf8", "annotation CSV in Latin-1", VINDR_EXPORT, ["unreadable CSV"],
         ["{case}/breast-level_annotations.csv"], _latin1_csv),
    Case("vindr-csv-path-in-image-id", "image_id '../../../outside' would name a file outside the tree",
         VINDR_EXPORT, ["image_id", "not a plain name", "line 2"], ["{case}/breast-level_annotations.csv"],
         lambda c: vindr(c, rows=set_row(vindr_rows(), 0, image_id="../../../outside"))),
    Case("vindr-findings-not-a-list", "finding_categories 'Mass' without list brackets and quotes", VINDR_EXPORT,
         ["finding_categories on line 2", "not a list of quoted names"], ["{case}/finding_annotations.csv"],
         lambda c: vindr(c, findings=_findings(finding_categories="[Mass]"))),
    Case("vindr-findings-code", "finding_categories holding a Python expression (never evaluated)", VINDR_EXPORT,
         ["finding_categories on line 2", "not a list of quoted names"], ["{case}/finding_annotations.csv"],
         lambda c: vindr(c, findings=_findings(finding_categories="__import__('os').system('touch PWNED')"))),
    Case("vindr-findings-bad-box", "a lesion box with a non-number corner", VINDR_EXPORT, ["bad box", "line 2"],
         ["{case}/finding_annotations.csv"],
         lambda c: vindr(c, findings=_findings(finding_categories="['Mass']", xmin="3", ymin="4", xmax="abc",
                                               ymax="9"))),
    Case("vindr-findings-inverted-box", "a lesion box with xmin > xmax", VINDR_EXPORT, ["bad box", "line 2"],
         ["{case}/finding_annotations.csv"],
         lambda c: vindr(c, findings=_findings(finding_categories="['Mass']", xmin="15", ymin="4", xmax="3",
                                               ymax="9"))),
    Case("vindr-listed-file-missing", "the CSV lists an image whose file is missing", VINDR_EXPORT,
         ["INCOMPLETE", "but missing"], ["{case}/images/study0/img0R.dicom"],
         lambda c: vindr(c, skip_images=("img0R",))),
    Case("vindr-empty-split", "export of split 'val', which no row has", [*VINDR_EXPORT[:-3], "val", "--out", "{out}"],
         ["no images in split", "val"], [], lambda c: vindr(c)),
    Case("vindr-csv-header-only", "annotation CSV with a header and no rows", VINDR_EXPORT, ["no usable images"],
         ["{case}"], lambda c: vindr(c, rows=[])),
    # --- NIfTI datasets (manifest.csv + volumes) ---
    Case("nifti-truncated", "a .nii.gz cut short", NIFTI_EXPORT, ["INCOMPLETE", "unreadable NIfTI"],
         ["{case}/v0.nii.gz"], lambda c: (nifti_set(c), _truncate(c / "v0.nii.gz", 0.5))),
    Case("nifti-is-text", "a text file named .nii.gz", NIFTI_EXPORT, ["INCOMPLETE", "unreadable NIfTI"],
         ["{case}/v0.nii.gz"], lambda c: (nifti_set(c), (c / "v0.nii.gz").write_text("not a volume\n"))),
    Case("nifti-nan-voxels", "a volume with a NaN voxel", NIFTI_EXPORT, ["NaN or infinite"], ["{case}/v0.nii.gz"],
         lambda c: nifti_set(c, volumes={"v0.nii.gz": _nan_volume()})),
    Case("nifti-inf-voxels", "a volume with an infinite voxel", NIFTI_EXPORT, ["NaN or infinite"],
         ["{case}/v1.nii.gz"], lambda c: nifti_set(c, volumes={"v1.nii.gz": _inf_volume()})),
    Case("nifti-constant-volume", "every voxel the same value", NIFTI_EXPORT, ["same value"], ["{case}/v0.nii.gz"],
         lambda c: nifti_set(c, volumes={"v0.nii.gz": np.full((8, 8, 8), 42.0)})),
    Case("nifti-2d-in-3d-set", "a 2D image in a 3D dataset", NIFTI_EXPORT, ["expected a 3D volume"],
         ["{case}/v1.nii.gz"], lambda c: nifti_set(c, volumes={"v1.nii.gz": np.arange(64.0).reshape(8, 8)})),
    Case("nifti-4d-volume", "a 4D time series where one volume is expected", NIFTI_EXPORT, ["expected a 3D volume"],
         ["{case}/v0.nii.gz"], lambda c: nifti_set(c, volumes={"v0.nii.gz": np.arange(1024.0).reshape(4, 4, 8, 8)})),
    Case("nifti-bomb", "a 352-byte header declaring 32767³ voxels", NIFTI_EXPORT, ["INCOMPLETE", "header declares"],
         ["{case}/v0.nii.gz"], lambda c: (nifti_set(c), _nifti_bomb_file(c / "v0.nii.gz"))),
    Case("nifti-manifest-missing-column", "manifest without patient_id", NIFTI_EXPORT,
         ["missing column(s): patient_id"], ["{case}/manifest.csv"],
         lambda c: nifti_set(c, header=["id", "split", "path"])),
    Case("nifti-manifest-duplicate-id", "two manifest rows with one id", NIFTI_EXPORT, ["duplicate id", "line 3"],
         ["{case}/manifest.csv"],
         lambda c: nifti_set(c, manifest_rows=[{"id": "v0", "patient_id": "p0", "split": "train", "path": "v0.nii.gz"},
                                               {"id": "v0", "patient_id": "p1", "split": "train",
                                                "path": "v1.nii.gz"}])),
    Case("nifti-manifest-empty-split", "a manifest row with an empty split", NIFTI_EXPORT, ["line 3", "empty 'split'"],
         ["{case}/manifest.csv"],
         lambda c: nifti_set(c, manifest_rows=[{"id": "v0", "patient_id": "p0", "split": "train", "path": "v0.nii.gz"},
                                               {"id": "v1", "patient_id": "p1", "split": "", "path": "v1.nii.gz"}])),
    Case("nifti-manifest-escapes-root", "a manifest path '../v0.nii.gz' leaving the dataset folder", NIFTI_EXPORT,
         ["line 2", "leaves the dataset folder"], ["{case}/manifest.csv"],
         lambda c: nifti_set(c, manifest_rows=[{"id": "v0", "patient_id": "p0", "split": "train",
                                                "path": "../v0.nii.gz"}])),
    Case("nifti-manifest-absolute-path", "a manifest path '/etc/hostname'", NIFTI_EXPORT,
         ["line 2", "absolute path"], ["{case}/manifest.csv"],
         lambda c: nifti_set(c, manifest_rows=[{"id": "v0", "patient_id": "p0", "split": "train",
                                                "path": "/etc/hostname"}])),
    Case("nifti-manifest-missing-file", "a manifest row naming a file that is not there", NIFTI_EXPORT,
         ["INCOMPLETE", "but missing"], ["{case}/v9.nii.gz"],
         lambda c: nifti_set(c, manifest_rows=[{"id": "v0", "patient_id": "p0", "split": "train", "path": "v0.nii.gz"},
                                               {"id": "v9", "patient_id": "p9", "split": "train",
                                                "path": "v9.nii.gz"}])),
    Case("nifti-config-2d-shape", "a NIfTI preset whose shape is 2D", NIFTI_EXPORT, ["needs a 3D shape"],
         ["{case}/manifest.csv"], lambda c: nifti_set(c, preset={**NIFTI_PRESET, "preprocess": {"shape": [8, 8]}})),
    # --- image folders (reader: folder; audit replicas) ---
    Case("folder-3d-in-2d-set", "a 3D .npy volume among 2D images", FOLDER_EXPORT,
         ["INCOMPLETE", "3D volume where the set is 2D"], ["{case}/b.npy"],
         lambda c: folder_dataset(c, extra={"b.npy": _npy(np.ones((4, 5, 6), np.float32))})),
    Case("folder-nan-pixels", "a float image with a NaN pixel", FOLDER_EXPORT, ["INCOMPLETE", "NaN or infinite"],
         ["{case}/b.npy"], lambda c: folder_dataset(c, extra={"b.npy": _npy(np.where(np.eye(16) > 0, np.nan, 0.5))})),
    Case("folder-inf-pixels", "a float image with +inf pixels", FOLDER_EXPORT, ["INCOMPLETE", "NaN or infinite"],
         ["{case}/b.npy"], lambda c: folder_dataset(c, extra={"b.npy": _npy(np.where(np.eye(16) > 0, np.inf, 0.5))})),
    Case("folder-png16-8bit-values", "a 16-bit PNG whose values stay below 256 (reads as black)", FOLDER_EXPORT,
         ["INCOMPLETE", "values stay within 8 bits"], ["{case}/b.png"],
         lambda c: folder_dataset(c, extra={"b.png": lambda p: png(p, np.arange(256, dtype=np.uint16).reshape(16, 16))})),
    Case("folder-png-truncated", "a PNG cut in half", FOLDER_EXPORT, ["INCOMPLETE", "cannot read image"],
         ["{case}/a1.png"], lambda c: (folder_dataset(c), _truncate(c / "a1.png", 0.5))),
    Case("folder-png-zero-bytes", "a zero-byte .png", FOLDER_EXPORT, ["INCOMPLETE", "cannot read image"],
         ["{case}/a1.png"], lambda c: (folder_dataset(c), (c / "a1.png").write_bytes(b""))),
    Case("folder-png-bomb", "a 545-byte PNG declaring 60000 × 60000 pixels", FOLDER_EXPORT,
         ["INCOMPLETE", "decompression-bomb"], ["{case}/b.png"],
         lambda c: folder_dataset(c, extra={"b.png": _png_bomb})),
    Case("folder-pickle-npy", "a pickle with an .npy name", FOLDER_EXPORT, ["INCOMPLETE", "pickle"], ["{case}/b.npy"],
         lambda c: folder_dataset(c, extra={"b.npy": lambda p: p.write_bytes(b"\x80\x04K\x01.")})),
    Case("folder-manifest-missing-file", "the manifest lists a file that is not there", FOLDER_EXPORT,
         ["line 3", "not a file"], ["{case}/manifest.csv"],
         lambda c: folder_dataset(c, manifest="file,id\na0.png,a0\nmissing.png,m\n")),
    Case("folder-manifest-no-file-column", "a manifest without its 'file' column", FOLDER_EXPORT,
         ["required column 'file'"], ["{case}/manifest.csv"], lambda c: folder_dataset(c, manifest="name,id\na0.png,a\n")),
    Case("folder-manifest-escapes-root", "a manifest row '../a0.png'", FOLDER_EXPORT,
         ["line 2", "leaves the dataset folder"], ["{case}/manifest.csv"],
         lambda c: folder_dataset(c, manifest="file,id\n../a0.png,a0\n")),
    Case("folder-manifest-duplicate-file", "one file listed twice", FOLDER_EXPORT, ["duplicate file", "line 3"],
         ["{case}/manifest.csv"], lambda c: folder_dataset(c, manifest="file,id\na0.png,x\na0.png,y\n")),
    Case("folder-manifest-bad-birads", "birads 'maybe'", FOLDER_EXPORT, ["birads on line 2"], ["{case}/manifest.csv"],
         lambda c: folder_dataset(c, manifest="file,birads\na0.png,maybe\n")),
    Case("folder-manifest-birads-inf", "birads 'inf' (used to crash int())", FOLDER_EXPORT, ["birads on line 2"],
         ["{case}/manifest.csv"], lambda c: folder_dataset(c, manifest="file,birads\na0.png,inf\n")),
    Case("folder-manifest-empty", "a manifest with a header and no rows", FOLDER_EXPORT, ["manifest has no rows"],
         ["{case}/manifest.csv"], lambda c: folder_dataset(c, manifest="file,id\n")),
    Case("replicas-empty-synthetic-folder", "the synthetic folder holds no images", REPLICAS, ["no image files"],
         ["{case}/synth"], lambda c: (folder_sets(c), [p.unlink() for p in (c / "synth").glob("*.png")],
                                      (c / "synth" / "README.txt").write_text("nothing here\n"))),
    Case("replicas-image-too-small", "the training folder's first image is 3 × 3 pixels", REPLICAS, ["too small"],
         ["{case}/train/train0.png"],
         lambda c: (folder_sets(c), png(c / "train" / "train0.png", np.arange(9, dtype=np.uint8).reshape(3, 3)))),
    Case("replicas-3d-among-2d", "a NIfTI volume in the 2D holdout folder", REPLICAS, ["3D volume where the set is 2D"],
         ["{case}/holdout/vol.nii.gz"], lambda c: (folder_sets(c), nifti(c / "holdout" / "vol.nii.gz",
                                                                        smooth_volume(3)))),
    Case("deepssim-too-few-images", "DeepSSIM training on 3 images", ["deepssim", "train", "--train-folder",
                                                                      "{case}/train", "--shape", "16x16", "--out",
                                                                      "{out}"],
         ["at least 4"], [], lambda c: folder_sets(c)),
    # --- configs and presets ---
    Case("unknown-dataset-preset", "--data names a preset that does not exist",
         ["data", "inspect", "--data", "vindr-mammo", "--data-root", "{case}", "--out", "{out}"],
         ["unknown dataset preset 'vindr-mammo'"], [], lambda c: c.mkdir(parents=True)),
    Case("unknown-generator-preset", "--config names a preset that does not exist",
         ["generator", "train", "--data", "{case}/data.yaml", "--data-root", "{case}", "--config", "ldm2d-huge",
          "--out", "{out}"], ["unknown generator preset 'ldm2d-huge'"], [], lambda c: folder_dataset(c)),
    Case("config-unknown-key", "preprocess.colour is not a key", FOLDER_EXPORT, ["unknown key 'preprocess.colour'"],
         ["{case}/data.yaml"], _config_case("name: x\nreader: folder\npreprocess: {shape: [16, 16], colour: red}\n")),
    Case("config-shape-too-small", "a 2 × 2 preprocessing shape", FOLDER_EXPORT, ["preprocess.shape"],
         ["{case}/data.yaml"], _config_case("name: x\nreader: folder\npreprocess: {shape: [2, 2]}\n")),
    Case("config-shape-bomb", "a 100000 × 100000 preprocessing shape", FOLDER_EXPORT, ["above the size limit"],
         ["{case}/data.yaml"], _config_case("name: x\nreader: folder\npreprocess: {shape: [100000, 100000]}\n")),
    Case("config-not-yaml", "a tab-indented, unbalanced YAML file", FOLDER_EXPORT, ["not valid YAML"],
         ["{case}/data.yaml"], _config_case("name: x\n\treader: [folder\n")),
    Case("config-python-tag", "a YAML tag that would call os.system", FOLDER_EXPORT,
         ["refused YAML", "python/object/apply"], ["{case}/data.yaml"],
         _config_case("name: !!python/object/apply:os.system ['touch PWNED']\nreader: folder\n")),
    Case("config-alias-bomb", "'billion laughs' anchors", FOLDER_EXPORT, ["aliases"], ["{case}/data.yaml"],
         lambda c: _config_case(_alias_bomb_text())(c)),
    Case("config-not-a-mapping", "a YAML list where a mapping of keys is expected", FOLDER_EXPORT,
         ["expected a mapping"], ["{case}/data.yaml"], _config_case("- name\n- reader\n")),
    # --- audit run and the score verbs ---
    Case("run-gates-bad-op", "a gate whose op is '=<'", RUN + ["--gates", "{case}/gates.yaml"],
         ["gates.0.op"], ["{case}/gates.yaml"],
         lambda c: run_world(c, gates="version: 1\ngates:\n  - {metric: replicas/flagged_share, op: '=<', "
                                      "threshold: 0.05}\n")),
    Case("run-gates-threshold-nan", "a gate whose threshold is .nan (every comparison with it is false)",
         RUN + ["--gates", "{case}/gates.yaml"], ["threshold", "finite"], ["{case}/gates.yaml"],
         lambda c: run_world(c, gates="version: 1\ngates:\n  - {metric: replicas/flagged_share, op: '<=', "
                                      "threshold: .nan}\n")),
    Case("run-gates-unknown-stage", "a gate on a figure of a stage that does not exist",
         RUN + ["--gates", "{case}/gates.yaml"], ["unknown stage 'copies'"], ["{case}/gates.yaml"],
         lambda c: run_world(c, gates="version: 1\ngates:\n  - {metric: copies/share, op: '<=', threshold: 0.05}\n")),
    Case("run-gates-empty", "a gates file with no gate (it would pass anything)", RUN + ["--gates", "{case}/gates.yaml"],
         ["at least one gate"], ["{case}/gates.yaml"], lambda c: run_world(c, gates="version: 1\ngates: []\n")),
    Case("run-gates-unknown-key", "a gates file with a misspelt key", RUN + ["--gates", "{case}/gates.yaml"],
         ["unknown key 'required_stage'"], ["{case}/gates.yaml"],
         lambda c: run_world(c, gates="version: 1\nrequired_stage: [replicas]\ngates:\n  - {metric: "
                                      "replicas/flagged_share, op: '<=', threshold: 0.05}\n")),
    Case("run-unknown-gates-preset", "--gates names a preset that does not exist", RUN + ["--gates", "strict"],
         ["unknown gate preset 'strict'"], [], run_world),
    Case("run-unknown-dataset-preset", "--data names a preset that does not exist",
         ["run", "--model", "{case}/model", "--data", "vindr-mammo", "--data-root", "{case}/data", "--out", "{out}"],
         ["unknown dataset preset 'vindr-mammo'"], [], run_world),
    Case("run-config-bad-stage-parameter", "--config sets the replica quantile to 2",
         RUN + ["--config", "{case}/run.yaml"], ["stage 'replicas'", "quantile"], ["{case}/run.yaml"],
         lambda c: run_world(c, config="replicas: {quantile: 2}\n")),
    Case("run-model-of-volumes-on-2d-data", "a folder model of 3D volumes audited against a 2D dataset", RUN,
         ["makes 3D images", "is 2D"], ["{case}/model"],
         lambda c: run_world(c, model={f"v{i}.npy": _npy(smooth_volume(i)) for i in range(3)})),
    Case("run-checkpoint-for-another-shape", "a 2D checkpoint (16 × 16) audited against a 3D dataset",
         ["run", "--model", "{case}/ckpt", "--data", "{case}/volumes.yaml", "--data-root", "{case}/volumes",
          "--stages", "replicas", "--out", "{out}"], ["makes 2D images", "is 3D"], ["{case}/ckpt"],
         _volume_world, setup="tiny_ldm_checkpoint"),
    Case("run-model-not-a-model", "--model is a folder with no model and no images", RUN, ["not a model"],
         ["{case}/model"], lambda c: run_world(c, model={"README.txt": lambda p: p.write_text("no images\n")})),
    Case("run-n-beyond-the-folder", "--n 50 on a folder model of 6 images", RUN + ["--n", "50"],
         ["holds 6 images", "--n 50"], ["{case}/model"], run_world),
    Case("run-members-csv-missing", "--members names a CSV that is not there", RUN + ["--members", "{case}/members.csv"],
         ["members CSV not found"], ["{case}/members.csv"], run_world),
    Case("score-fidelity-too-few-images", "FID/KID/precision-recall on 3 synthetic images",
         ["score", "fidelity", "--real", "{case}/train", "--synthetic", "{case}/synth", "--out", "{out}"],
         ["3 images", "at least 6"], [], lambda c: folder_sets(c)),
    # --- generation ---
    Case("generate-not-a-model", "--model is a folder with no model and no images",
         ["generate", "--model", "{case}", "--n", "2", "--out", "{out}"], ["not a model"], ["{case}"],
         lambda c: (c.mkdir(parents=True), (c / "notes.txt").write_text("empty\n"))),
    Case("generate-pipeline-without-weights", "a diffusers pipeline folder whose UNet weights are missing",
         ["generate", "--model", "{case}/pipe", "--n", "1", "--out", "{out}"], ["cannot load"], ["{case}/pipe"],
         lambda c: c.mkdir(parents=True), setup="pipeline_without_weights"),
    Case("deepssim-checkpoint-2d-on-volumes", "a DeepSSIM checkpoint trained on 2D images used on 3D volumes",
         ["replicas", "--train", "{case}/train", "--holdout", "{case}/holdout", "--synthetic", "{case}/synth",
          "--scorers", "ncc,deepssim", "--deepssim", "{case}/ckpt", "--out", "{out}"],
         ["model is 2D", "(8, 8, 8)"], [], _volumes_and_small_images, setup="deepssim_checkpoint_2d"),
    Case("generate-conditions-bad-box", "a conditions CSV box with a NaN corner", GENERATE_WITH_CONDITIONS,
         ["bad box", "line 2"], ["{case}/conditions.csv"],
         _conditions_case('birads,boxes\n2,"1,2,nan,9,Mass"\n')),
    Case("generate-conditions-bad-birads", "a conditions CSV with birads 'four'", GENERATE_WITH_CONDITIONS,
         ["birads on line 3"], ["{case}/conditions.csv"], _conditions_case("birads,density\n2,A\nfour,B\n")),
    Case("generate-conditions-extra-field", "a conditions row with a field more than its header",
         GENERATE_WITH_CONDITIONS, ["line 2", "fields where the header has"], ["{case}/conditions.csv"],
         _conditions_case("birads,density\n2,A,extra\n")),
    Case("generate-n-zero", "--n 0", ["generate", "--model", "{case}/model", "--n", "0", "--out", "{out}"],
         ["--n"], [], _conditions_case("birads\n2\n")),
]


def write_case_readme(case_dir: Path, case: Case) -> None:
    command = " ".join(case.command)
    (case_dir / "CASE.txt").write_text(f"{case.id}: {case.description}\ncommand: audit {command}\n"
                                       f"expected: exit 2, one line naming the input, saying: "
                                       f"{'; '.join(case.words)}\n")


def build(dest: Path = HERE) -> list[Case]:
    import shutil

    sys.path.insert(0, str(HERE.parents[2]))
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        folder = dest / case.id
        if folder.exists():
            shutil.rmtree(folder)
        if case.build is not None:
            case.build(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_case_readme(folder, case)
    (dest / "cases.yaml").write_text(
        "# The bad-input corpus: every case, the command a user would run on it, and what the one-line error must\n"
        "# say. Generated by build_corpus.py (edit that, then rebuild). {case} = the case folder, {out} = an\n"
        "# output folder; `setup` names a function of setups.py run on a copy at test time.\n"
        + yaml.safe_dump([c.to_yaml() for c in CASES], sort_keys=False, width=120, allow_unicode=True))
    return CASES


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"built {len(CASES)} cases")
