"""The 3D phantom: head/brain MR-like volumes, several scans per patient, written as NIfTI + manifest.csv.

    out/volumes/<id>.nii.gz       float32, ~1 mm voxels, stored in the patient's orientation (see ORIENTATIONS)
    out/labels/<id>_seg.nii.gz    (with_masks) uint8 tissue labels (brain3d_anatomy.LABEL_NAMES), same grid
    out/manifest.csv              id, patient_id, split (train/test, by patient), path, lesion, age_group, scan,
                                  orientation, vessels

Identity: a patient is one template head (outline, folding pattern, ventricles, vessel tree, lesion); each scan
is that template under a small smooth deformation and shift, with its own bias field, intensity scale and
Rician noise. Different patients differ in all of the template.

Orientation: the voxel array of patients assigned "RAS" is stored as generated (axis 0 → Right, 1 → Anterior,
2 → Superior); "LPS" flips the first two axes (DICOM/ITK convention); "LIP" flips the first axis and swaps the
last two (a permuted, coronal-like storage order). The affine always describes the stored array correctly, so
`nibabel.as_closest_canonical` gives back the same RAS array for every orientation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from audit.data.phantoms.brain3d_anatomy import (AGE_GROUPS, HeadAnatomy, label_intensities, random_head,
                                                 tissue_labels)
from audit.data.phantoms.common import (PhantomSummary, balanced_choice, check_arguments, count, empty_output_folder,
                                        patient_rng, split_patients, write_csv)
from audit.data.phantoms.texture import power_law_noise

KIND = "brain3d"
SPLIT_NAMES = ("train", "test")
ORIENTATIONS = ("RAS", "LPS", "LIP")
MANIFEST_COLUMNS = ("id", "patient_id", "split", "path", "lesion", "age_group", "scan", "orientation", "vessels")
DEFORMATION_VOXELS = 0.8  # largest smooth displacement between two scans of a patient, at 64³
SHIFT_VOXELS = 0.3  # std of a sub-voxel per-scan rigid shift (position jitter), at 64³
NOISE_STD = 0.015  # Rician noise std relative to the intensity scale
TEXTURE_STD = 0.04  # per-patient tissue texture (multiplicative)


def patient_template(anatomy: HeadAnatomy, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise-free intensities of the patient's head: label intensities × a per-patient tissue texture,
    lightly blurred for partial-volume edges."""
    texture = 1.0 + TEXTURE_STD * power_law_noise(labels.shape, 2.0, rng, low_cut=8.0 / max(labels.shape))
    template = label_intensities(labels) * texture
    return ndimage.gaussian_filter(template, sigma=0.6).astype(np.float32)


def scan_of(template: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One acquisition: a small smooth deformation + shift of the template, a bias field, a global intensity
    scale, Rician noise. Returns (volume float32, labels uint8) on the same grid."""
    shape = template.shape
    scale_vox = min(shape) / 64.0
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = []
    for axis in range(3):
        field = power_law_noise(shape, 5.0, rng, low_cut=2.0 / max(shape))
        field *= DEFORMATION_VOXELS * scale_vox / max(float(np.abs(field).max()), 1e-6)
        coords.append(grid[axis] + field + np.float32(rng.normal(0, SHIFT_VOXELS * scale_vox)))
    volume = ndimage.map_coordinates(template, coords, order=1, mode="nearest")
    warped_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest").astype(np.uint8)
    bias = np.exp(0.08 * power_law_noise(shape, 5.0, rng, low_cut=1.0 / max(shape)))
    scale = float(rng.uniform(0.85, 1.15)) * 1000.0
    signal = volume * bias * scale
    sigma = NOISE_STD * 1000.0
    noisy = np.sqrt((signal + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    return noisy.astype(np.float32), warped_labels


def ras_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel → world (mm, RAS) for an array in RAS index order; the world origin sits at the array centre."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
    return affine


def reorient(array: np.ndarray, affine_ras: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """The RAS array and affine re-expressed in storage orientation `code` (e.g. "LPS"): same world, other
    voxel order."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(code)))
    stored = np.ascontiguousarray(apply_orientation(array, transform))
    return stored, affine_ras @ inv_ornt_aff(transform, array.shape)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)  # scanner coordinates
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))  # nibabel's gzip writer stores mtime 0: files are byte-identical per seed


def write_brain3d_phantom(out: Path, patients: int, seed: int = 0, shape=(64, 64, 64), scans_per_patient: int = 2,
                          test_fraction: float = 0.2, lesions: bool = True, vessels: bool = True,
                          with_masks: bool = False, progress: bool = False) -> PhantomSummary:
    """Write `patients` × `scans_per_patient` NIfTI volumes and manifest.csv under `out` (new or empty folder).

    Lesion presence alternates over patients in a shuffled round-robin (both occur in every set of ≥ 2 patients
    when `lesions`); every orientation occurs in every set of ≥ 3 patients, every age group likewise.
    """
    check_arguments(patients, test_fraction, seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sides of at least 16 voxels, got {shape!r}")
    if scans_per_patient < 1:
        raise ValueError(f"scans_per_patient must be at least 1, got {scans_per_patient!r}")
    out = empty_output_folder(out)

    splits = split_patients(patients, test_fraction, seed, SPLIT_NAMES, KIND)
    ages = balanced_choice(patients, AGE_GROUPS, seed, KIND, "age")
    orientations = balanced_choice(patients, ORIENTATIONS, seed, KIND, "orientation")
    has_lesion = balanced_choice(patients, (True, False), seed, KIND, "lesion") if lesions else [False] * patients
    rows = []
    bar = None
    if progress:
        from audit.progress import progress_bar

        bar = progress_bar(total=patients, desc="brain3d phantom")
    for index in range(patients):
        rng = patient_rng(seed, KIND, index)
        anatomy = random_head(rng, shape, ages[index], has_lesion[index])
        labels = tissue_labels(anatomy, shape, rng, vessels)
        template = patient_template(anatomy, labels, rng)
        spacing = tuple(float(round(s, 2)) for s in rng.uniform(0.9, 1.1, size=3))
        affine_ras = ras_affine(shape, spacing)
        patient_id = f"P{index:04d}"
        for scan in range(scans_per_patient):
            volume, scan_labels = scan_of(template, labels, patient_rng(seed, KIND, index, f"scan/{scan}"))
            scan_id = f"{patient_id}_S{scan}"
            stored, affine = reorient(volume, affine_ras, orientations[index])
            rel = f"volumes/{scan_id}.nii.gz"
            save_nifti(out / rel, stored, affine)
            if with_masks:
                stored_labels, _ = reorient(scan_labels, affine_ras, orientations[index])
                save_nifti(out / "labels" / f"{scan_id}_seg.nii.gz", stored_labels, affine)
            rows.append({"id": scan_id, "patient_id": patient_id, "split": splits[index], "path": rel,
                         "lesion": int(anatomy.has_lesion), "age_group": anatomy.age_group, "scan": scan,
                         "orientation": orientations[index], "vessels": int(vessels)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, rows)
    patient_split = {row["patient_id"]: row["split"] for row in rows}
    return PhantomSummary(
        kind=KIND, out=out, seed=seed, n_patients=patients, n_images=len(rows),
        images_per_split=count(row["split"] for row in rows), patients_per_split=count(patient_split.values()),
        label_counts={"lesion": count(row["lesion"] for row in rows),
                      "age_group": count(row["age_group"] for row in rows),
                      "orientation": count(row["orientation"] for row in rows)},
        files=("manifest.csv",))
