"""The phantom datasets: on-disk layout, DICOM/NIfTI correctness, labels that match the pixels, determinism,
and the identity property re-identification relies on — all measured from the written files."""

from __future__ import annotations

import ast
import csv
import filecmp
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from audit.data.phantoms import write_brain3d_phantom, write_mammo_phantom
from audit.data.phantoms.mammo_dicom import MANUFACTURERS, encode_stored

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

MAMMO_SIZE = (256, 208)
MAMMO_PATIENTS = 12
BREAST_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split"]
FINDING_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                   "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin",
                   "xmax", "ymax", "split"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im) > 127


def tree_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------- mammography

class MammoSet:
    """One written phantom plus everything read back from it, shared by the mammography tests."""

    def __init__(self, root: Path, summary):
        self.root, self.summary = root, summary
        self.breast_header, self.breast_rows = read_csv(root / "breast-level_annotations.csv")
        self.finding_header, self.finding_rows = read_csv(root / "finding_annotations.csv")
        self.metadata_header, self.metadata_rows = read_csv(root / "metadata.csv")
        self.datasets = {row["image_id"]: pydicom.dcmread(self.image_path(row)) for row in self.breast_rows}

    def image_path(self, row: dict) -> Path:
        return self.root / "images" / row["study_id"] / f"{row['image_id']}.dicom"

    def mask(self, row: dict, kind: str) -> np.ndarray:
        return read_mask(self.root / "masks" / row["study_id"] / f"{row['image_id']}_{kind}.png")

    def pixels(self, image_id: str) -> np.ndarray:
        return self.datasets[image_id].pixel_array

    def display(self, image_id: str) -> np.ndarray:
        """What the VinDr viewer shows, in [0, 1]: linear window, MONOCHROME1 inverted, padding zeroed."""
        ds = self.datasets[image_id]
        stored = ds.pixel_array.astype(np.float64)
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        shown = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            shown = 1.0 - shown
        shown[stored == ds.PixelPaddingValue] = 0.0
        return shown

    def foreground(self, image_id: str) -> np.ndarray:
        ds = self.datasets[image_id]
        return ds.pixel_array != ds.PixelPaddingValue


@pytest.fixture(scope="module")
def mammo(tmp_path_factory) -> MammoSet:
    root = tmp_path_factory.mktemp("mammo") / "phantom"
    summary = write_mammo_phantom(root, MAMMO_PATIENTS, seed=3, test_fraction=0.25, image_size=MAMMO_SIZE,
                                  with_masks=True)
    return MammoSet(root, summary)


def test_mammo_layout_columns_and_ids(mammo):
    assert mammo.breast_header == BREAST_COLUMNS
    assert mammo.finding_header == FINDING_COLUMNS
    for column in ("SOP Instance UID", "Series Instance UID", "Photometric Interpretation", "Manufacturer",
                   "Patient's Age", "Rows", "Columns", "Window Center", "Window Width", "Pixel Padding Value"):
        assert column in mammo.metadata_header
    assert not {"Patient's Name", "Patient ID", "Patient's Birth Date", "Institution Name"} & set(mammo.metadata_header)
    assert len(mammo.breast_rows) == 4 * MAMMO_PATIENTS == mammo.summary.n_images
    assert len(mammo.metadata_rows) == len(mammo.breast_rows)

    studies: dict[str, list[dict]] = {}
    for row in mammo.breast_rows:
        studies.setdefault(row["study_id"], []).append(row)
        assert mammo.image_path(row).is_file()
        assert (int(row["height"]), int(row["width"])) == MAMMO_SIZE
        assert re.fullmatch(r"BI-RADS [1-5]", row["breast_birads"])
        assert re.fullmatch(r"DENSITY [ABCD]", row["breast_density"])
        ds = mammo.datasets[row["image_id"]]
        # VinDr ids are MD5 hex digests of the DICOM UIDs.
        assert row["study_id"] == md5(ds.StudyInstanceUID)
        assert row["series_id"] == md5(ds.SeriesInstanceUID)
        assert row["image_id"] == md5(ds.SOPInstanceUID)
        assert (ds.ImageLaterality, ds.ViewPosition) == (row["laterality"], row["view_position"])
    assert len(studies) == MAMMO_PATIENTS
    for rows in studies.values():
        assert sorted((r["laterality"], r["view_position"]) for r in rows) == [
            ("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
        assert len({r["split"] for r in rows}) == 1  # split by study = patient
        assert len({r["breast_density"] for r in rows}) == 1
    splits = [rows[0]["split"] for rows in studies.values()]
    assert sorted(set(splits)) == ["test", "training"]
    assert splits.count("test") == round(0.25 * MAMMO_PATIENTS)
    assert mammo.summary.patients_per_split == {"test": 3, "training": 9}

    by_sop = {md5(row["SOP Instance UID"]): row for row in mammo.metadata_rows}
    assert set(by_sop) == set(mammo.datasets)
    for image_id, ds in mammo.datasets.items():
        assert by_sop[image_id]["Photometric Interpretation"] == ds.PhotometricInterpretation
        assert int(by_sop[image_id]["Rows"]) == ds.Rows


def test_mammo_dicom_tags_and_pixels(mammo):
    photometrics, bit_depths = set(), set()
    for image_id, ds in mammo.datasets.items():
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.PatientSex == "F" and re.fullmatch(r"0[4-7]\dY", ds.PatientAge)
        assert str(ds.get("PatientName", "")) == "" and ds.get("PatientID", "") == ""
        for private in ("PatientBirthDate", "InstitutionName", "StudyDate", "ReferringPhysicianName"):
            assert private not in ds
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14) and ds.HighBit == ds.BitsStored - 1
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
        assert len(ds.PixelSpacing) == 2 and float(ds.ImagerPixelSpacing[0]) > 0
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.shape == MAMMO_SIZE
        top = (1 << ds.BitsStored) - 1
        assert int(pixels.max()) <= top
        # Padding: 0 for MONOCHROME2, the maximum for MONOCHROME1; it is the background, never tissue.
        expected_pad = top if ds.PhotometricInterpretation == "MONOCHROME1" else 0
        assert ds.PixelPaddingValue == expected_pad
        padding = pixels == expected_pad
        chest_wall_col = 0 if ds.ImageLaterality == "L" else MAMMO_SIZE[1] - 1
        far_col = MAMMO_SIZE[1] - 1 - chest_wall_col
        assert not padding[MAMMO_SIZE[0] // 2, chest_wall_col]  # breast against the chest wall
        assert padding[0, far_col] and padding[-1, far_col]  # air beyond the nipple
        assert 0.15 < padding.mean() < 0.75
        # The window covers the tissue values (1st-99th percentile) and stays within the stored range ± a bit.
        tissue = pixels[~padding].astype(float)
        lo, hi = np.percentile(tissue, [1, 99])
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        assert center - width / 2 <= lo and hi <= center + width / 2
        assert -0.2 * top < center - width / 2 and center + width / 2 < 1.2 * top
        photometrics.add(ds.PhotometricInterpretation)
        bit_depths.add(ds.BitsStored)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert bit_depths == {12, 14}


def test_monochrome1_stores_tissue_inverted(mammo):
    # Same display values through a MONOCHROME2 and a MONOCHROME1 maker of equal bit depth: exact inversion.
    m2 = next(m for m in MANUFACTURERS if m.photometric == "MONOCHROME2" and m.bits_stored == 12)
    m1 = next(m for m in MANUFACTURERS if m.photometric == "MONOCHROME1" and m.bits_stored == 12)
    display = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    foreground = np.ones((8, 8), bool)
    foreground[0, 0] = False
    s2, s1 = encode_stored(display, foreground, m2), encode_stored(display, foreground, m1)
    assert np.array_equal(s1[foreground], m1.max_value - s2[foreground].astype(int))
    assert s2[0, 0] == 0 and s1[0, 0] == m1.max_value
    assert s2[foreground].min() > 0 and s1[foreground].max() < m1.max_value  # tissue never equals padding

    # In the written files: dense tissue is stored higher than fat for MONOCHROME2, lower for MONOCHROME1,
    # and the viewer (which inverts MONOCHROME1) shows it brighter in both. CC views only: on MLO the
    # non-dense foreground also holds the (bright) pectoral muscle, for which no mask is written.
    for row in mammo.breast_rows:
        if row["view_position"] != "CC":
            continue
        ds = mammo.datasets[row["image_id"]]
        dense = mammo.mask(row, "dense")
        fat = mammo.foreground(row["image_id"]) & ~dense & ~mammo.mask(row, "lesion")
        if dense.sum() < 50 or fat.sum() < 50:
            continue
        stored = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME2":
            assert stored[dense].mean() > stored[fat].mean()
        else:
            assert stored[dense].mean() < stored[fat].mean()
        # Measured over 160 CC views per seed (seeds 0, 1, 3, 9): difference 0.44 on average, 0.33 at least.
        shown = mammo.display(row["image_id"])
        assert shown[dense].mean() > shown[fat].mean() + 0.2


def test_mammo_same_seed_identical_other_seed_differs(tmp_path):
    kwargs = dict(patients=2, image_size=(96, 80), with_masks=True)
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_mammo_phantom(first, seed=11, **kwargs)
    write_mammo_phantom(second, seed=11, **kwargs)
    write_mammo_phantom(other, seed=12, **kwargs)
    files = tree_files(first)
    assert files == tree_files(second) and len(files) == 3 + 8 + 16
    match, mismatch, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    assert (first / "breast-level_annotations.csv").read_text() != (other / "breast-level_annotations.csv").read_text()
    a = pydicom.dcmread(next((first / "images").rglob("*.dicom"))).pixel_array
    b = pydicom.dcmread(next((other / "images").rglob("*.dicom"))).pixel_array
    assert not np.array_equal(a, b)


def test_mammo_findings_match_pixels_and_labels(mammo):
    findings: dict[str, list[dict]] = {}
    for row in mammo.finding_rows:
        findings.setdefault(row["image_id"], []).append(row)
    assert set(findings) == {row["image_id"] for row in mammo.breast_rows}  # every image has ≥ 1 row
    mass_contrasts = []
    for row in mammo.breast_rows:
        rows = findings[row["image_id"]]
        breast_birads = int(row["breast_birads"].split()[-1])
        categories = [ast.literal_eval(r["finding_categories"]) for r in rows]
        if categories == [["No Finding"]]:
            assert breast_birads == 1
            assert all(rows[0][k] == "" for k in ("finding_birads", "xmin", "ymin", "xmax", "ymax"))
            continue
        assert breast_birads >= 2
        assert max(int(r["finding_birads"].split()[-1]) for r in rows) == breast_birads
        shown = mammo.display(row["image_id"])
        breast = mammo.foreground(row["image_id"])
        lesion = mammo.mask(row, "lesion")
        for r, cats in zip(rows, categories):
            assert set(cats) <= {"Mass", "Suspicious Calcification"} and cats
            x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 <= MAMMO_SIZE[1] and 0 <= y0 < y1 <= MAMMO_SIZE[0]
            box = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            assert breast[box].mean() > 0.9  # findings lie inside the breast
            assert lesion[box].any()
            if cats == ["Mass"]:
                mass_contrasts.append(shown[box][breast[box]].mean() - shown[breast].mean())
    # Measured (seed 3, 32 masses): box mean above the breast mean by 0.28 on average, 0.066 at the least.
    assert len(mass_contrasts) >= 5
    assert min(mass_contrasts) > 0.0 and np.mean(mass_contrasts) > 0.08

    # A breast's findings appear in both its views, with the same categories and BI-RADS.
    per_breast: dict[tuple, dict[str, list]] = {}
    for row in mammo.finding_rows:
        key = (row["study_id"], row["laterality"])
        entry = (row["finding_categories"], row["finding_birads"])
        per_breast.setdefault(key, {}).setdefault(row["view_position"], []).append(entry)
    for views in per_breast.values():
        assert sorted(views["CC"]) == sorted(views["MLO"])


def test_mammo_density_follows_label(mammo):
    dense_share: dict[str, list[float]] = {}
    brightness: dict[str, list[float]] = {}
    for row in mammo.breast_rows:
        if row["view_position"] != "CC":  # CC: no pectoral muscle in the foreground
            continue
        breast = mammo.foreground(row["image_id"])
        density = row["breast_density"][-1]
        dense_share.setdefault(density, []).append(mammo.mask(row, "dense")[breast].mean())
        brightness.setdefault(density, []).append(mammo.display(row["image_id"])[breast].mean())
    assert sorted(dense_share) == ["A", "B", "C", "D"]
    shares = [float(np.mean(dense_share[d])) for d in "ABCD"]
    bright = [float(np.mean(brightness[d])) for d in "ABCD"]
    # Targets 0.08 / 0.25 / 0.48 / 0.70 of the breast; measured (seed 3): 0.076 / 0.276 / 0.471 / 0.710.
    assert all(b - a > 0.08 for a, b in zip(shares, shares[1:])), shares
    assert shares[0] < 0.15 and shares[3] > 0.55, shares
    # From the pixels alone (what a model sees): the viewer image gets brighter A → D
    # (measured: 0.257 / 0.358 / 0.458 / 0.588).
    assert all(b > a for a, b in zip(bright, bright[1:])), bright


def lowpass(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = (s - s % factor for s in image.shape)
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask], b[mask]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def test_mammo_identity_left_right_mirror_similar(mammo):
    """Re-identification needs identity in the pixels: a woman's right CC, mirrored, correlates with her left CC
    far more than with another woman's (correlation of 8×-downsampled viewer images on the common breast)."""
    views = {}
    for row in mammo.breast_rows:
        if row["view_position"] == "CC":
            image = mammo.display(row["image_id"])
            fg = mammo.foreground(row["image_id"])
            if row["laterality"] == "R":
                image, fg = image[:, ::-1], fg[:, ::-1]
            views[(row["study_id"], row["laterality"])] = (lowpass(image, 8), lowpass(fg.astype(float), 8) > 0.99)
    studies = sorted({s for s, _ in views})
    corr = np.zeros((len(studies), len(studies)))
    for i, si in enumerate(studies):
        left, left_fg = views[(si, "L")]
        for j, sj in enumerate(studies):
            right, right_fg = views[(sj, "R")]
            corr[i, j] = masked_correlation(left, right, left_fg & right_fg)
    same = np.diag(corr)
    different = corr[~np.eye(len(studies), dtype=bool)]
    # Measured (seed 3, 12 women): same 0.735 on average (min 0.63), different 0.154 (max 0.35); top-1 1.0.
    assert same.mean() > different.mean() + 0.4, (same.mean(), different.mean())
    assert (corr.argmax(axis=1) == np.arange(len(studies))).mean() >= 0.9


def mlo_to_cc_warps(mlo: np.ndarray, mlo_fg: np.ndarray):
    """The MLO image resampled into CC geometry under a grid of candidate transforms (tilt about a chest-wall
    anchor, vertical stretch, anchor offset) — the family the phantom draws its MLO views from; its parameters
    are not in the files, so the test searches them, identically for same- and different-patient pairs."""
    from scipy import ndimage

    h, w = mlo.shape
    rows, cols = np.arange(h, dtype=float)[:, None], np.arange(w, dtype=float)[None, :]
    for tilt in np.arange(0.1, 0.55, 0.05):
        for stretch in (1.15, 1.28, 1.4):
            for offset in np.arange(-0.12, 0.13, 0.04) * h:
                across = (rows - h / 2) * stretch
                mlo_rows = h / 2 + offset + cols * np.sin(tilt) + across * np.cos(tilt)
                mlo_cols = np.broadcast_to(cols * np.cos(tilt) - across * np.sin(tilt), mlo_rows.shape)
                yield (ndimage.map_coordinates(mlo, [mlo_rows, mlo_cols], order=1, cval=0.0),
                       ndimage.map_coordinates(mlo_fg.astype(float), [mlo_rows, mlo_cols], order=0) > 0.5)


def test_mammo_identity_cc_and_mlo_show_the_same_breast(mammo):
    """CC and MLO of one breast sample the same texture through different geometry: after the best transform
    of a fixed search grid, a woman's MLO matches her own CC better than other women's (4×-downsampled)."""
    views = {}
    for row in mammo.breast_rows:
        if row["laterality"] == "L":
            image, fg = mammo.display(row["image_id"]), mammo.foreground(row["image_id"])
            views[(row["study_id"], row["view_position"])] = (lowpass(image, 4), lowpass(fg.astype(float), 4) > 0.99)
    studies = sorted({s for s, _ in views})
    corr = np.full((len(studies), len(studies)), -1.0)
    for j, mlo_study in enumerate(studies):
        for warped, warped_fg in mlo_to_cc_warps(*views[(mlo_study, "MLO")]):
            for i, cc_study in enumerate(studies):
                cc, cc_fg = views[(cc_study, "CC")]
                common = cc_fg & warped_fg
                if common.sum() >= 100:
                    corr[i, j] = max(corr[i, j], masked_correlation(cc, warped, common))
    eye = np.eye(len(studies), dtype=bool)
    # Measured (12 women; seeds 3/0/9/1): same 0.57/0.57/0.52/0.57 on average, different 0.25/0.28/0.29/0.24;
    # top-1 0.92 at every seed.
    assert corr[eye].mean() > corr[~eye].mean() + 0.15, (corr[eye].mean(), corr[~eye].mean())
    assert (corr.argmax(axis=0) == np.arange(len(studies))).mean() >= 0.75


def test_mammo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_mammo_phantom(tmp_path / "x", 0)
    with pytest.raises(ValueError):
        write_mammo_phantom(tmp_path / "x", 2, test_fraction=1.5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        write_mammo_phantom(tmp_path / "full", 2)


# ------------------------------------------------------------------------------------------------------- 3D

BRAIN_SHAPE = (40, 44, 36)
BRAIN_PATIENTS = 6
MANIFEST_REQUIRED = ["id", "patient_id", "split", "path", "lesion"]
LESION, VESSEL, EYE = 5, 6, 7


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    root = tmp_path_factory.mktemp("brain") / "phantom"
    summary = write_brain3d_phantom(root, BRAIN_PATIENTS, seed=2, shape=BRAIN_SHAPE, with_masks=True)
    header, rows = read_csv(root / "manifest.csv")
    return root, summary, header, rows


def canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def test_brain_layout_manifest_and_splits(brain):
    root, summary, header, rows = brain
    assert header[:5] == MANIFEST_REQUIRED
    assert {"age_group", "scan", "orientation"} <= set(header)
    assert len(rows) == 2 * BRAIN_PATIENTS == summary.n_images
    patients: dict[str, list[dict]] = {}
    for row in rows:
        assert (root / row["path"]).is_file() and row["path"].startswith("volumes/")
        assert (root / "labels" / f"{row['id']}_seg.nii.gz").is_file()
        assert row["split"] in ("train", "test") and row["lesion"] in ("0", "1")
        patients.setdefault(row["patient_id"], []).append(row)
    assert len(patients) == BRAIN_PATIENTS
    for scans in patients.values():
        assert len(scans) == 2 and len({s["split"] for s in scans}) == 1 and len({s["lesion"] for s in scans}) == 1
    assert sorted({s[0]["split"] for s in patients.values()}) == ["test", "train"]
    assert {row["lesion"] for row in rows} == {"0", "1"}


def test_brain_affine_describes_stored_orientation(brain):
    root, _, _, rows = brain
    seen = set()
    for row in rows:
        image = nib.load(str(root / row["path"]))
        assert "".join(nib.aff2axcodes(image.affine)) == row["orientation"]
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        spacing = np.sort(image.header.get_zooms()[:3])
        assert 0.85 < spacing[0] and spacing[-1] < 1.15
        assert image.get_data_dtype() == np.float32
        seen.add(row["orientation"])
        # Whatever the storage order, the eyes are anterior and inferior of the head centre in RAS space —
        # so the affine (not just the array) is right.
        labels = nib.as_closest_canonical(nib.load(str(root / "labels" / f"{row['id']}_seg.nii.gz")))
        seg = np.asarray(labels.dataobj)
        head_centre = np.argwhere(seg > 0).mean(axis=0)
        eye_centre = np.argwhere(seg == EYE).mean(axis=0)
        assert eye_centre[1] > head_centre[1] + 0.2 * BRAIN_SHAPE[1]  # anterior
        assert eye_centre[2] < head_centre[2] - 0.1 * BRAIN_SHAPE[2]  # inferior
        # Canonical shapes agree across orientations (LIP permutes the last two axes in storage).
        assert seg.shape == BRAIN_SHAPE
    assert seen == {"RAS", "LPS", "LIP"}


def test_brain_tissue_intensities_and_labels(brain):
    root, _, _, rows = brain
    for row in rows:
        volume = canonical(root / row["path"])
        seg = np.asarray(nib.as_closest_canonical(nib.load(str(root / "labels" / f"{row['id']}_seg.nii.gz"))).dataobj)
        present = set(np.unique(seg).tolist())
        assert {0, 1, 2, 3, 4, VESSEL, EYE} <= present
        assert (LESION in present) == (row["lesion"] == "1")
        mean = {k: volume[seg == k].mean() for k in present}
        assert mean[4] > mean[3] > mean[2] > mean[0]  # WM > GM > CSF > air (T1-like)
        if row["lesion"] == "1":
            assert mean[LESION] > mean[4]


def test_brain_identity_repeat_scan_beats_other_patients(brain):
    """Two scans of a patient correlate more than scans of different patients (4×-downsampled, canonical)."""
    root, _, _, rows = brain
    by_patient: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        v = canonical(root / row["path"])
        d, h, w = (s - s % 4 for s in v.shape)
        small = v[:d, :h, :w].reshape(d // 4, 4, h // 4, 4, w // 4, 4).mean(axis=(1, 3, 5)).ravel()
        by_patient.setdefault(row["patient_id"], {})[row["scan"]] = (small - small.mean()) / small.std()
    ids = sorted(by_patient)
    eye = np.eye(len(ids), dtype=bool)

    def correlations(scans: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
        return np.array([[masked_correlation(scans[a]["0"], scans[b]["1"], np.ones_like(scans[a]["0"], bool))
                          for b in ids] for a in ids])

    raw = correlations(by_patient)
    # Every head is roughly an ellipsoid, so raw correlations are all high (measured, seed 2: same 0.993,
    # different 0.953 on average; other seeds and sizes: gaps 0.03-0.05, top-1 1.0). Subtracting the set's mean
    # volume leaves what is individual (seed 2: same 0.82 on average, min 0.68; different -0.18, max 0.53;
    # seeds 0/9/5 with 12-24 patients: same 0.75-0.79, different -0.04 to -0.08, top-1 0.92-1.0).
    population_mean = np.mean([v for scans in by_patient.values() for v in scans.values()], axis=0)
    residual = correlations({p: {s: v - population_mean for s, v in scans.items()} for p, scans in by_patient.items()})
    assert raw[eye].mean() > raw[~eye].mean() + 0.015
    assert (raw.argmax(axis=1) == np.arange(len(ids))).mean() >= 0.8
    assert residual[eye].mean() > residual[~eye].mean() + 0.5
    assert (residual.argmax(axis=1) == np.arange(len(ids))).mean() >= 0.8


def test_brain_deterministic_and_switches(tmp_path):
    kwargs = dict(patients=2, shape=(24, 24, 24), with_masks=True)
    write_brain3d_phantom(tmp_path / "a", seed=4, **kwargs)
    write_brain3d_phantom(tmp_path / "b", seed=4, **kwargs)
    write_brain3d_phantom(tmp_path / "c", seed=5, **kwargs)
    files = tree_files(tmp_path / "a")
    assert files == tree_files(tmp_path / "b") and len(files) == 1 + 4 + 4
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    first = canonical(tmp_path / "a" / "volumes" / "P0000_S0.nii.gz")
    assert not np.array_equal(first, canonical(tmp_path / "c" / "volumes" / "P0000_S0.nii.gz"))

    write_brain3d_phantom(tmp_path / "plain", patients=3, seed=4, shape=(24, 24, 24), lesions=False,
                          vessels=False, with_masks=True, scans_per_patient=1)
    _, rows = read_csv(tmp_path / "plain" / "manifest.csv")
    assert len(rows) == 3 and {r["lesion"] for r in rows} == {"0"}
    for row in rows:
        seg = canonical(tmp_path / "plain" / "labels" / f"{row['id']}_seg.nii.gz")
        assert not np.isin(seg, [LESION, VESSEL]).any()
