"""The mammography phantom: procedural 4-view screening studies written in the VinDr-Mammo layout.

    out/images/<study_id>/<image_id>.dicom   real DICOM (DX/MG For Presentation), uint16, 12- or 14-bit
    out/breast-level_annotations.csv         one row per image
    out/finding_annotations.csv              one row per finding (one 'No Finding' row for a clean image)
    out/metadata.csv                         technical DICOM attributes, DICOM attribute names as columns
    out/masks/<study_id>/<image_id>_dense.png, _lesion.png    (with_masks) uint8 0/255, DICOM pixel grid

One patient = one study (VinDr has no patient id; patient = study). Identity is built in: the four views of a
woman share her breast shape and a per-woman 1/f^β texture field (the two breasts mirror-similar, each with a
little texture of its own), CC and MLO sample the same texture through different warps, and findings live in
that texture so both views of a breast show them. Everything is a pure function of (seed, patient index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.data.phantoms.common import (PhantomSummary, balanced_choice, check_arguments, count, empty_output_folder,
                                        patient_rng, split_patients, write_csv)
from audit.data.phantoms.mammo_anatomy import (BIRADS_PROBABILITIES, FAT_LEVEL, GLAND_ENVELOPE_WEIGHT,
                                               GLAND_LEVEL, GLAND_SOFTNESS, PECTORAL_LEVEL, SIDES, SKIN_BOOST,
                                               VIEWS, BreastAnatomy, Finding, gland_envelope, lesion_box,
                                               random_anatomy, random_findings, render_finding,
                                               thickness_profile, view_geometry)
from audit.data.phantoms.mammo_dicom import (MANUFACTURERS, METADATA_COLUMNS, UID_ROOT, ImageTags, Manufacturer,
                                             display_window, encode_stored, metadata_row, write_dicom)
from audit.data.phantoms.texture import power_law_noise, sample_periodic

KIND = "mammo"
SPLIT_NAMES = ("training", "test")
DENSITIES = ("A", "B", "C", "D")
# Target share of fibroglandular tissue in the breast (A almost entirely fatty … D extremely dense).
DENSE_FRACTION = {"A": 0.08, "B": 0.25, "C": 0.48, "D": 0.70}
SIDE_TEXTURE_SHARE = 0.93  # correlation of the two breasts' texture fields (mirror-similar, not identical)
PIXEL_NOISE = 0.012  # per-image quantum-like noise (display units)
TEXTURE_LOW_CUT = 6.0  # cycles per texture period below which the 1/f^β spectrum is flat (blob size ≈ W/6)

BREAST_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split")
FINDING_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                   "breast_birads", "breast_density", "finding_categories", "finding_birads", "xmin", "ymin",
                   "xmax", "ymax", "split")


@dataclass(frozen=True)
class MammoPatient:
    index: int
    density: str
    dense_fraction: float
    age_years: int
    maker: Manufacturer
    texture_beta: float
    anatomy: dict[str, BreastAnatomy]  # by side
    birads: dict[str, int]  # by side
    findings: dict[str, list[Finding]]  # by side


def make_patient(seed: int, index: int, density: str, maker: Manufacturer, size: tuple[int, int]) -> MammoPatient:
    rng = patient_rng(seed, KIND, index)
    left = random_anatomy(rng)
    anatomy = {"L": left, "R": left.mirrored_twin(rng)}
    fraction = float(np.clip(DENSE_FRACTION[density] + rng.uniform(-0.04, 0.04), 0.03, 0.9))
    birads = {side: int(rng.choice(5, p=BIRADS_PROBABILITIES)) + 1 for side in SIDES}
    findings = {side: random_findings(birads[side], rng, anatomy[side], size) for side in SIDES}
    return MammoPatient(index, density, fraction, int(rng.integers(40, 76)), maker,
                        float(rng.uniform(2.8, 3.2)), anatomy, birads, findings)


def texture_side_length(size: tuple[int, int]) -> int:
    """Power of two ≥ the image's longer side: one texture period covers a whole view."""
    return 1 << int(np.ceil(np.log2(max(size))))


def breast_textures(patient: MammoPatient, seed: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """One field per woman, plus a smaller field per breast: the breasts are mirror-similar, not copies."""
    n = texture_side_length(size)
    shared = power_law_noise((n, n), patient.texture_beta, patient_rng(seed, KIND, patient.index, "texture"),
                             low_cut=TEXTURE_LOW_CUT / n)
    out = {}
    for side in SIDES:
        own = power_law_noise((n, n), patient.texture_beta, patient_rng(seed, KIND, patient.index, f"texture/{side}"),
                              low_cut=TEXTURE_LOW_CUT / n)
        out[side] = SIDE_TEXTURE_SHARE * shared + np.sqrt(1 - SIDE_TEXTURE_SHARE ** 2) * own
    return out


@dataclass
class RenderedView:
    """One image in its stored orientation (right breasts mirrored: chest wall on the right)."""

    side: str
    view: str
    display: np.ndarray  # float32 [0, 1], 1 = densest; 0 outside the foreground
    foreground: np.ndarray  # bool: breast (+ pectoral muscle on MLO)
    dense: np.ndarray  # bool: fibroglandular tissue
    lesion: np.ndarray  # bool: pixels changed by a finding
    boxes: list[tuple[Finding, tuple[int, int, int, int]]]  # pixel-edge (xmin, ymin, xmax, ymax)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def render_patient(patient: MammoPatient, seed: int, size: tuple[int, int]) -> list[RenderedView]:
    """The four views L-CC, L-MLO, R-CC, R-MLO of one patient."""
    textures = breast_textures(patient, seed, size)
    offset = texture_side_length(size) / 2.0  # texture coordinates are centred on the chest-wall anchor
    views = [(side, view) for side in SIDES for view in VIEWS]
    geometries, scores = {}, {}
    for side, view in views:
        warp_rng = patient_rng(seed, KIND, patient.index, f"warp/{side}{view}")
        geo = view_geometry(patient.anatomy[side], view, size, patient.anatomy[side], warp_rng)
        texture = sample_periodic(textures[side], [geo.tex_rows + offset, geo.tex_cols])
        geometries[(side, view)] = geo
        scores[(side, view)] = texture + GLAND_ENVELOPE_WEIGHT * gland_envelope(geo.radius)
    # One fat/gland threshold per woman (from her left CC view), so all four views show the same tissue.
    reference = geometries[("L", "CC")]
    ref_tissue = reference.breast & ~reference.pectoral
    threshold = float(np.quantile(scores[("L", "CC")][ref_tissue], 1.0 - patient.dense_fraction))

    rendered = []
    for side, view in views:
        geo, score = geometries[(side, view)], scores[(side, view)]
        tissue = geo.breast & ~geo.pectoral
        gland = _sigmoid((score - threshold) / GLAND_SOFTNESS)
        display = FAT_LEVEL + (GLAND_LEVEL - FAT_LEVEL) * gland
        display *= 0.75 + 0.25 * thickness_profile(geo.radius)
        display += SKIN_BOOST * ((1.0 - geo.radius) < geo.skin_width)
        display = np.where(geo.pectoral, PECTORAL_LEVEL + 0.03 * (score - score.mean()), display)
        lesion = np.zeros(size, bool)
        boxes = []
        for finding in patient.findings[side]:
            drawing = render_finding(finding, geo)
            if drawing is None:
                continue
            drawing.apply(display)
            lesion[drawing.window] |= drawing.footprint
            box = lesion_box(drawing)
            if box is not None:
                boxes.append((finding, box))
        noise_rng = patient_rng(seed, KIND, patient.index, f"noise/{side}{view}")
        display += noise_rng.normal(0.0, PIXEL_NOISE, size=size).astype(np.float32)
        display = np.clip(display, 0.0, 1.0).astype(np.float32)
        display[~geo.breast] = 0.0
        dense = (score > threshold) & tissue
        if side == "R":  # stored with the chest wall on the right, like a real right breast
            w = size[1]
            display, geo_breast, dense, lesion = (a[:, ::-1].copy() for a in (display, geo.breast, dense, lesion))
            boxes = [(f, (w - x1, y0, w - x0, y1)) for f, (x0, y0, x1, y1) in boxes]
        else:
            geo_breast = geo.breast
        rendered.append(RenderedView(side, view, display, geo_breast, dense, lesion & geo_breast, boxes))
    return rendered


def deterministic_uid(seed: int, patient: int, role: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_ROOT, entropy_srcs=["synth-audit", KIND, str(seed), str(patient), role])


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("ascii")).hexdigest()


def _format_coordinate(value: int) -> str:
    return f"{float(value):.2f}"


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG", optimize=False)


def write_mammo_phantom(out: Path, patients: int, seed: int = 0, test_fraction: float = 0.2,
                        image_size: tuple[int, int] = (512, 416), with_masks: bool = False,
                        progress: bool = False) -> PhantomSummary:
    """Write `patients` procedural 4-view studies in the VinDr-Mammo layout under `out` (created; must be empty).

    Same seed → byte-identical DICOM files, CSVs and masks. Both MONOCHROME1 and MONOCHROME2 (and both 12- and
    14-bit storage) occur in every set of ≥ 5 patients; every density occurs in every set of ≥ 4.
    """
    check_arguments(patients, test_fraction, seed)
    size = (int(image_size[0]), int(image_size[1]))
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 × 32, got {image_size!r}")
    out = empty_output_folder(out)

    splits = split_patients(patients, test_fraction, seed, SPLIT_NAMES, KIND)
    densities = balanced_choice(patients, DENSITIES, seed, KIND, "density")
    makers = balanced_choice(patients, MANUFACTURERS, seed, KIND, "manufacturer")
    breast_rows, finding_rows, metadata_rows = [], [], []
    bar = None
    if progress:
        from audit.progress import progress_bar

        bar = progress_bar(total=patients, desc="mammo phantom")
    for index in range(patients):
        patient = make_patient(seed, index, densities[index], makers[index], size)
        study_uid = deterministic_uid(seed, index, "study")
        study_id = md5_hex(study_uid)
        pixel_spacing = patient.maker.detector_height_mm / size[0]
        for view in render_patient(patient, seed, size):
            series_uid = deterministic_uid(seed, index, f"series/{view.side}{view.view}")
            sop_uid = deterministic_uid(seed, index, f"image/{view.side}{view.view}")
            series_id, image_id = md5_hex(series_uid), md5_hex(sop_uid)
            stored = encode_stored(view.display, view.foreground, patient.maker)
            center, width = display_window(stored, view.foreground)
            tags = ImageTags(study_uid, series_uid, sop_uid, view.side, view.view, patient.age_years,
                             patient.maker, size[0], size[1], pixel_spacing, center, width)
            write_dicom(out / "images" / study_id / f"{image_id}.dicom", tags, stored)
            image_cols = {"study_id": study_id, "series_id": series_id, "image_id": image_id,
                          "laterality": view.side, "view_position": view.view, "height": size[0],
                          "width": size[1], "breast_birads": f"BI-RADS {patient.birads[view.side]}",
                          "breast_density": f"DENSITY {patient.density}"}
            breast_rows.append({**image_cols, "split": splits[index]})
            if view.boxes:
                for finding, (x0, y0, x1, y1) in view.boxes:
                    finding_rows.append({**image_cols, "finding_categories": str(list(finding.categories)),
                                         "finding_birads": f"BI-RADS {finding.birads}",
                                         "xmin": _format_coordinate(x0), "ymin": _format_coordinate(y0),
                                         "xmax": _format_coordinate(x1), "ymax": _format_coordinate(y1),
                                         "split": splits[index]})
            else:
                finding_rows.append({**image_cols, "finding_categories": str(["No Finding"]),
                                     "finding_birads": "", "xmin": "", "ymin": "", "xmax": "", "ymax": "",
                                     "split": splits[index]})
            metadata_rows.append(metadata_row(tags))
            if with_masks:
                _write_mask(out / "masks" / study_id / f"{image_id}_dense.png", view.dense)
                _write_mask(out / "masks" / study_id / f"{image_id}_lesion.png", view.lesion)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    write_csv(out / "breast-level_annotations.csv", BREAST_COLUMNS, breast_rows)
    write_csv(out / "finding_annotations.csv", FINDING_COLUMNS, finding_rows)
    write_csv(out / "metadata.csv", METADATA_COLUMNS, metadata_rows)
    study_split = {row["study_id"]: row["split"] for row in breast_rows}
    return PhantomSummary(
        kind=KIND, out=out, seed=seed, n_patients=patients, n_images=len(breast_rows),
        images_per_split=count(row["split"] for row in breast_rows),
        patients_per_split=count(study_split.values()),
        label_counts={
            "breast_birads": count(row["breast_birads"] for row in breast_rows),
            "breast_density": count(row["breast_density"] for row in breast_rows),
            "finding_categories": count(c for row in finding_rows for c in eval_list(row["finding_categories"])),
            "photometric_interpretation": count(row["Photometric Interpretation"] for row in metadata_rows),
            "manufacturer": count(row["Manufacturer"] for row in metadata_rows),
        },
        files=("breast-level_annotations.csv", "finding_annotations.csv", "metadata.csv"))


def eval_list(text: str) -> list[str]:
    import ast

    return list(ast.literal_eval(text))
