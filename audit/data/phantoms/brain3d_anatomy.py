"""The procedural head: tissue labels of one patient, built on normalised ellipsoid coordinates.

Labels (also the values of the `labels/<id>_seg.nii.gz` masks):
    0 background, 1 scalp/skull, 2 CSF (outer CSF, sulci, ventricles), 3 grey matter, 4 white matter,
    5 lesion, 6 vessel, 7 eye (orbit; marks anterior-inferior, so an orientation error is visible)

Arrays are in RAS+ index order (axis 0 → Right, 1 → Anterior, 2 → Superior). Patient identity lives in the head
and brain outline (3D noise), the folding pattern (zero-crossing sheets of a per-patient 3D noise field =
sulci), the ventricles and the vessel tree; age group changes ventricle size and cortical thickness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.data.phantoms.texture import power_law_noise

BACKGROUND, SCALP_SKULL, CSF, GREY_MATTER, WHITE_MATTER, LESION, VESSEL, EYE = range(8)
LABEL_NAMES = ("background", "scalp_skull", "csf", "grey_matter", "white_matter", "lesion", "vessel", "eye")

# T1-weighted-like intensities per label (arbitrary units, scaled per scan); lesion and vessels bright
# (as after contrast / on an angiography-like sequence), so they are findable.
# Label 1 is split for display: the outer band (scalp fat) bright, the inner band (bone) dark — see
# `label_intensities`.
LABEL_INTENSITY = np.array([0.0, 0.12, 0.12, 0.45, 0.72, 1.0, 1.25, 0.15], np.float32)
SCALP_INTENSITY = 0.62

AGE_GROUPS = ("young", "middle", "old")
VENTRICLE_SCALE = {"young": 0.8, "middle": 1.0, "old": 1.4}
CORTEX_THICKNESS = {"young": 0.15, "middle": 0.13, "old": 0.11}  # normalised radius units
SULCUS_WIDTH = {"young": 0.10, "middle": 0.14, "old": 0.20}  # |fold field| below this inside the cortex = CSF


@dataclass(frozen=True)
class HeadAnatomy:
    semi_axes: tuple[float, float, float]  # voxels
    centre: tuple[float, float, float]  # voxels
    skull_thickness: float  # normalised radius units
    ventricle: tuple[float, float, float, float]  # half-separation, length, height, width (normalised)
    age_group: str
    has_lesion: bool
    lesion_radius: float  # voxels


def random_head(rng: np.random.Generator, shape: tuple[int, int, int], age_group: str,
                has_lesion: bool) -> HeadAnatomy:
    size = np.asarray(shape, float)
    semi = size * np.array([0.36, 0.43, 0.38]) * rng.uniform(0.92, 1.06, size=3)
    centre = size / 2 + rng.normal(0, 0.015, size=3) * size
    v = VENTRICLE_SCALE[age_group] * rng.uniform(0.85, 1.15)
    ventricle = (float(rng.uniform(0.07, 0.11)), 0.30 * v, 0.13 * v, 0.07 * v)
    return HeadAnatomy(tuple(float(s) for s in semi), tuple(float(c) for c in centre),
                       float(rng.uniform(0.09, 0.13)), ventricle, age_group, has_lesion,
                       float(rng.uniform(2.5, 4.5) * min(shape) / 64))


def normalised_grid(anatomy: HeadAnatomy, shape: tuple[int, int, int]) -> list[np.ndarray]:
    return [((np.arange(n, dtype=np.float32) - c) / a).reshape([-1 if i == axis else 1 for i in range(3)])
            for axis, (n, c, a) in enumerate(zip(shape, anatomy.centre, anatomy.semi_axes))]


def tissue_labels(anatomy: HeadAnatomy, shape: tuple[int, int, int], rng: np.random.Generator,
                  vessels: bool) -> np.ndarray:
    """uint8 label volume of the patient's template head (before any per-scan deformation)."""
    x, y, z = normalised_grid(anatomy, shape)
    radius = np.sqrt(x * x + y * y + z * z)
    # Head and brain outlines wobble with smooth per-patient noise; the folding field has finer structure.
    outline = 1.0 + 0.035 * power_law_noise(shape, 4.0, rng, low_cut=2.0 / max(shape))
    fold = power_law_noise(shape, 2.5, rng, low_cut=6.0 / max(shape))
    head = radius <= outline
    brain_surface = outline - anatomy.skull_thickness - 0.045
    brain = radius <= brain_surface
    cortex_inner = brain_surface - CORTEX_THICKNESS[anatomy.age_group] * (1.0 + 0.35 * fold)
    labels = np.zeros(shape, np.uint8)
    labels[head] = SCALP_SKULL
    labels[head & (radius <= outline - anatomy.skull_thickness)] = CSF  # outer CSF between skull and brain
    labels[brain] = GREY_MATTER
    labels[brain & (radius <= cortex_inner)] = WHITE_MATTER
    # Sulci: thin sheets where the folding field crosses zero, cutting into the cortex from outside.
    sulci = brain & (radius > cortex_inner) & (np.abs(fold) < SULCUS_WIDTH[anatomy.age_group])
    labels[sulci] = CSF
    # Lateral ventricles: two ellipsoids either side of the midline, slightly asymmetric.
    sep, length, height, width = anatomy.ventricle
    for side in (-1, 1):
        shift = rng.normal(0, 0.01, size=3)
        inside = (((x - side * sep - shift[0]) / width) ** 2 + ((y - 0.02 - shift[1]) / length) ** 2
                  + ((z - 0.08 - shift[2]) / height) ** 2) <= 1.0
        labels[inside & brain] = CSF
    # Eyes: anterior-inferior, outside the brain — they make the orientation of a volume checkable.
    for side in (-1, 1):
        eye = ((x - side * 0.33) / 0.14) ** 2 + ((y - 0.86) / 0.14) ** 2 + ((z + 0.40) / 0.14) ** 2 <= 1.0
        labels[eye] = EYE
    if vessels:
        labels[vessel_tree(anatomy, shape, rng) & brain] = VESSEL
    if anatomy.has_lesion:
        labels[lesion_blob(anatomy, labels, rng)] = LESION
    return labels


def lesion_blob(anatomy: HeadAnatomy, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An irregular bright blob centred in white matter."""
    shape = labels.shape
    # Centre: a white-matter voxel at least a radius away from other tissue (eroded WM), chosen by the rng.
    from scipy import ndimage

    core = ndimage.binary_erosion(labels == WHITE_MATTER, iterations=max(1, int(anatomy.lesion_radius)))
    candidates = np.argwhere(core if core.any() else labels == WHITE_MATTER)
    centre = candidates[rng.integers(len(candidates))].astype(np.float32)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    wobble = 1.0 + 0.25 * power_law_noise(shape, 3.0, rng, low_cut=8.0 / max(shape))
    return (dist <= anatomy.lesion_radius * wobble) & (labels != BACKGROUND)


def vessel_tree(anatomy: HeadAnatomy, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Thin tubes: a few roots at the skull base growing upwards and outwards by a branching random walk."""
    mask = np.zeros(shape, bool)
    semi, centre = np.asarray(anatomy.semi_axes), np.asarray(anatomy.centre)
    step = 0.06  # normalised units per segment
    tube_radius = max(0.6, 0.8 * min(shape) / 64)
    roots = [np.array([-0.15, 0.15, -0.55]), np.array([0.15, 0.15, -0.55]), np.array([0.0, -0.25, -0.55])]
    stack = [(root + rng.normal(0, 0.03, 3), np.array([0.0, 0.0, 1.0]), 0) for root in roots]
    segments = []
    while stack and len(segments) < 400:
        point, direction, depth = stack.pop()
        for _ in range(int(rng.integers(6, 12))):
            direction = direction + rng.normal(0, 0.35, 3)
            direction[2] += 0.15  # keep growing upwards
            direction /= np.linalg.norm(direction)
            nxt = point + step * direction
            if np.linalg.norm(nxt) > 0.8:
                break
            segments.append((point, nxt))
            point = nxt
            if depth < 3 and rng.random() < 0.18:
                sideways = np.cross(direction, rng.normal(0, 1, 3))
                stack.append((point, direction + 0.8 * sideways / (np.linalg.norm(sideways) + 1e-9), depth + 1))
    for start, end in segments:
        a, b = start * semi + centre, end * semi + centre  # voxel coordinates
        lo = np.maximum(np.floor(np.minimum(a, b) - tube_radius - 1), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a, b) + tube_radius + 2), shape).astype(int)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(l, h, dtype=np.float32) for l, h in zip(lo, hi)], indexing="ij"), -1)
        ab = b - a
        t = np.clip(((grid - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        dist = np.linalg.norm(grid - (a + t[..., None] * ab), axis=-1)
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= dist <= tube_radius
    return mask


def label_intensities(labels: np.ndarray) -> np.ndarray:
    """Noise-free intensity per voxel: LABEL_INTENSITY, except that the outer part of the scalp/skull shell
    (the scalp) is bright and the inner part (bone) dark, as on T1."""
    from scipy import ndimage

    out = LABEL_INTENSITY[labels]
    band = max(1, round(min(labels.shape) / 40))
    inner_head = ndimage.binary_erosion(labels != BACKGROUND, iterations=band)
    out[(labels == SCALP_SKULL) & ~inner_head] = SCALP_INTENSITY
    return out
