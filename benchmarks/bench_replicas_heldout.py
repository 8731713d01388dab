"""Held-out replica benchmark: copy families, image sources and parameter ranges on which NO detector parameter
was chosen — the honest test of whether replica detection generalises beyond what it was tuned on.

    .venv/bin/python benchmarks/bench_replicas_heldout.py --save-scores [--domains 2D,3D] [--seed 101]
        [--scorers ncc,ssim,ncc_shift,ncc_zoom,ncc_reg,ncc_local,feature] [--out DIR/heldout.json]
    .venv/bin/python benchmarks/bench_replicas_heldout.py --from-scores DIR      (tables only)

FROZEN. Everything below — sources, tile sizes, groups, split fractions, the families and their parameter
ranges, copies per family, the 8-bit quantisation and the seeds — was written and committed before any result of
this benchmark was seen, and must not change: a change makes a new benchmark, whose first result is then the
only held-out one. The detector (`attacks/replicas`) was developed on `bench_replicas.py` (other sources, 16-bit
precision, reflected borders, other ranges). Which split informed which choice is logged in docs/replicas.md.
Seed 101 is the first held-out split; if the detector is changed after its results were seen, 101 is no longer
held out and the next report must use a fresh seed (102, then 103, ...).

Image sources (none used by bench_replicas.py or by any choice of the detector), every image quantised to 8 bit
(as real exported images are) after all processing:
- 2D (128²): scikit-image's bundled 8-bit images (grey; camera, moon, coins, page, text, clock, brick, grass,
  gravel, cell, astronaut, coffee, chelsea, rocket, hubble_deep_field, immunohistochemistry, retina, the left
  stereo_motorcycle image) and pydicom-data images not used elsewhere (US1_UNCI ultrasound, OBXXXX1A ultrasound,
  MR-SIEMENS-DICOM-WithOverlays and examples_overlay MR, vlut_04, mlut_18, both eCT_Supplemental CT frames), cut
  into non-overlapping 128² tiles (informative ones kept; a group = a 2×2 block of tiles, so that adjacent tiles
  do not straddle splits); plus `write_mammo_phantom` views with a seed and size never used before (group =
  patient).
- 3D (32³): nilearn's MNI152 grey- and white-matter probability maps (the T1 template is bench_replicas.py's) cut
  into 24 mm cubes resized to 32³; nibabel's example4d EPI (first volume) in 32×32×24 blocks resized to 32³;
  pydicom-data's color3d_jpeg_baseline ultrasound cine (grey, frames × rows × columns) in 64³ blocks resized to
  32³; `write_brain3d_phantom` heads with a seed never used before, at 96³, cut into 32³ cubes (group = head).
  A group = a source block (volumes: 2×2×2 blocks of cubes) or a head.

Split by group: train 40%, holdout 20% (calibration null), novel 30% (negatives), background 10% (only the
canvases into which partial copies are pasted — never a negative, never a training image). Pools are
de-duplicated across groups (NCC > 0.95) as in bench_replicas.py.

Families (copies of random training images; COPIES_2D = 40 / COPIES_3D = 25 per family). Geometry uses a
constant black border (bench_replicas.py reflected it); every range lies beyond what the detector searches or was
tuned on:
- shift_large: translation 12–25% of a side (the largest axis ≥ 12%; ncc_reg searches ≤ 10%);
- rotate_large: rotation 12–30° (2D in-plane; 3D about one random axis; ncc_reg searches ≤ 10°);
- crop_large: a crop of 63–80% per axis (area 40–64%), resized back (magnification 1.25–1.6; ncc_reg ≤ 1.25);
- compound: shift ≤ 8%, rotation ≤ 8°, scale 0.9–1.1, then gamma 0.7–1.4, contrast ×0.7–1.3 and Gaussian noise
  σ 0.02–0.04, all at once;
- elastic: a smooth random displacement field (amplitude 3–6 px in 2D / 1.5–3 voxels in 3D, smoothness σ 10–16 px
  / 4–6 voxels);
- resolution_loss: area-downsampled by 2.5–4× (3D: 2–3×) and upsampled back (linear);
- clahe: adaptive histogram equalisation (scikit-image, clip 0.01–0.03, kernel 1/8–1/4 of a side);
- intensity_curve: sigmoid remapping (cutoff 0.35–0.65, gain 5–10), non-linear and global;
- occlusion: one box of 20–35% of the image (aspect 0.5–2 in 2D) filled with a constant or with noise;
- partial_large: a region of 45–65% per axis (2D: 20–42% of the area) pasted into a background image;
- partial_small: a region of 30–45% per axis (2D: 9–20% of the area) pasted into a background image;
- jpeg_heavy: JPEG quality 10–25 (3D: slice-wise);
- noise_heavy: Gaussian noise σ 0.06–0.10;
- blur_heavy: Gaussian blur σ 2–3 px (3D: 1.5–2 voxels).

Reported per family and scorer (and per preset combination: `default`, `fast`): AUC and TPR at 1% FPR of copies
vs novel images, TPR at the threshold calibrated on the holdout (q = 0.99), and that threshold's FPR on the
novel images.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replicas import (deduplicate, domain_tables, informative, load_scores, save_scores,  # noqa: E402
                            split_by_group, unit, write_results)

SEED = 101  # the first held-out split; after a change of the detector seen on it: 102, 103, ...
SIZE_2D = (128, 128)
SIZE_3D = (32, 32, 32)
COPIES_2D, COPIES_3D = 40, 25
SPLIT = (0.40, 0.20, 0.30, 0.10)  # train, holdout, novel, background (groups)
MAMMO_PATIENTS, MAMMO_SEED, MAMMO_SIZE = 120, 2026, (240, 192)
BRAIN_PATIENTS, BRAIN_SEED = 60, 2027
SKIMAGE_2D = ("camera", "moon", "coins", "page", "text", "clock", "brick", "grass", "gravel", "cell", "astronaut",
              "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
              "stereo_motorcycle")
PYDICOM_2D = ("US1_UNCI.dcm", "OBXXXX1A.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "examples_overlay.dcm",
              "vlut_04.dcm", "mlut_18.dcm", "eCT_Supplemental.dcm")
FAMILIES = ("shift_large", "rotate_large", "crop_large", "compound", "elastic", "resolution_loss", "clahe",
            "intensity_curve", "occlusion", "partial_large", "partial_small", "jpeg_heavy", "noise_heavy",
            "blur_heavy")
SCORERS = ("ncc", "ssim", "ncc_shift", "ncc_zoom", "ncc_reg", "ncc_local", "feature")


def quantise(image: np.ndarray) -> np.ndarray:
    """To 8 bit and back: what an exported PNG/JPEG keeps."""
    return (np.round(np.clip(image, 0, 1) * 255) / 255).astype(np.float32)


# =============================================================================================== sources


def grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return unit(image)


def tiles(image: np.ndarray, name: str, tile: int = 128) -> list[tuple[np.ndarray, str]]:
    """Non-overlapping tile² tiles, informative ones; group = the 2×2 block of tiles."""
    from audit.data.imageio import fit_to_shape

    out = []
    for r in range(0, image.shape[0] - tile + 1, tile):
        for c in range(0, image.shape[1] - tile + 1, tile):
            crop = unit(image[r:r + tile, c:c + tile])
            if informative(crop):
                out.append((fit_to_shape(crop, SIZE_2D), f"{name}:{r // (2 * tile)},{c // (2 * tile)}"))
    return out


def skimage_tiles() -> list[tuple[np.ndarray, str]]:
    import skimage.data

    out = []
    for name in SKIMAGE_2D:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        out += tiles(grey(image), f"skimage-{name}")
    return out


def pydicom_tiles() -> list[tuple[np.ndarray, str]]:
    import pydicom
    import pydicom.data
    from pydicom.pixels import apply_color_lut

    out = []
    for name in PYDICOM_2D:
        ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
        pixels = ds.pixel_array
        if ds.PhotometricInterpretation == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
        frames = [pixels] if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4)) else list(pixels)
        for i, frame in enumerate(frames):
            out += tiles(grey(frame), f"dicom-{name}-{i}")
    return out


def mammo_views(work: Path) -> list[tuple[np.ndarray, str]]:
    from audit.data.imageio import fit_to_shape, read_image, to_unit_range
    from audit.data.phantoms import write_mammo_phantom

    root = work / "mammo"
    write_mammo_phantom(root, patients=MAMMO_PATIENTS, seed=MAMMO_SEED, image_size=MAMMO_SIZE)
    return [(fit_to_shape(to_unit_range(read_image(path)), SIZE_2D), f"mammo:{path.parent.name}")
            for path in sorted(root.glob("images/*/*.dicom"))]


def cubes(volume: np.ndarray, name: str, block: tuple[int, int, int]) -> list[tuple[np.ndarray, str]]:
    """Non-overlapping blocks resized to SIZE_3D, informative ones; group = the 2×2×2 block of blocks."""
    from audit.data.imageio import fit_to_shape

    out = []
    for z in range(0, volume.shape[0] - block[0] + 1, block[0]):
        for y in range(0, volume.shape[1] - block[1] + 1, block[1]):
            for x in range(0, volume.shape[2] - block[2] + 1, block[2]):
                cube = unit(volume[z:z + block[0], y:y + block[1], x:x + block[2]])
                if informative(cube):
                    group = f"{name}:{z // (2 * block[0])},{y // (2 * block[1])},{x // (2 * block[2])}"
                    out.append((fit_to_shape(cube, SIZE_3D), group))
    return out


def volume_cubes(work: Path) -> list[tuple[np.ndarray, str]]:
    import nibabel as nib
    import pydicom
    import pydicom.data
    from nibabel.testing import data_path
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    out = []
    for name, loader in (("mni-gm", load_mni152_gm_template), ("mni-wm", load_mni152_wm_template)):
        out += cubes(unit(np.asarray(loader(resolution=1).get_fdata(), np.float32)), name, (24, 24, 24))
    epi = np.asarray(nib.load(os.path.join(data_path, "example4d.nii.gz")).get_fdata(), np.float32)[..., 0]
    out += cubes(unit(epi), "epi", (32, 32, 24))
    cine = pydicom.dcmread(pydicom.data.get_testdata_file("color3d_jpeg_baseline.dcm"))
    pixels = np.asarray(cine.pixel_array, np.float32)  # (frames, rows, columns, 3), decoded to RGB
    out += cubes(unit(pixels[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)), "us-cine", (64, 64, 64))
    return out


def brain_cubes(work: Path) -> list[tuple[np.ndarray, str]]:
    from audit.data.imageio import read_image, to_unit_range
    from audit.data.phantoms import write_brain3d_phantom

    root = work / "brain"
    write_brain3d_phantom(root, patients=BRAIN_PATIENTS, seed=BRAIN_SEED, shape=(96, 96, 96), scans_per_patient=1)
    out = []
    for path in sorted(root.glob("volumes/*.nii.gz")):
        volume = to_unit_range(read_image(path))
        for z in range(0, 65, 32):
            for y in range(0, 65, 32):
                for x in range(0, 65, 32):
                    cube = unit(volume[z:z + 32, y:y + 32, x:x + 32])
                    if informative(cube):
                        out.append((cube, f"brain:{path.name}"))
    return out


def pool(domain: str, work: Path) -> list[tuple[np.ndarray, str]]:
    raw = (skimage_tiles() + pydicom_tiles() + mammo_views(work)) if domain == "2D" \
        else (volume_cubes(work) + brain_cubes(work))
    return [(quantise(image), group) for image, group in raw]


def source_of(group: str) -> str:
    return group.split(":")[0]


# =============================================================================================== families


def affine(image: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample image(M · (x − c) + c − shift) (linear, black outside): content rotated/scaled by M⁻¹ and moved by
    `shift` voxels."""
    from scipy.ndimage import affine_transform

    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ (centre + shift)
    return affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)


def rotation(angle_deg: float, ndim: int, axis: int = 0) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    out = np.eye(ndim)
    i, j = (0, 1) if ndim == 2 else tuple(a for a in range(3) if a != axis)
    out[i, i], out[i, j], out[j, i], out[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return out


def resize(image: np.ndarray, shape) -> np.ndarray:
    from skimage.transform import resize as sk_resize

    shape = tuple(int(s) for s in shape)
    return sk_resize(image, shape, order=1, mode="edge", preserve_range=True,
                     anti_aliasing=any(a > s for a, s in zip(image.shape, shape))).astype(np.float32)


def jpeg_slices(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    def one(sl):
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(sl, 0, 1) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255

    return one(image) if image.ndim == 2 else np.stack([one(sl) for sl in image])


def make_families(rng: np.random.Generator, ndim: int) -> dict:
    """family → fn(source image, background image) → copy. One generator for every draw (seeded per family)."""
    from scipy.ndimage import gaussian_filter, map_coordinates
    from skimage.exposure import adjust_sigmoid, equalize_adapthist

    def sign():
        return rng.choice([-1.0, 1.0])

    def shift_large(x, bg):
        while True:
            t = rng.uniform(-0.25, 0.25, ndim)
            if np.abs(t).max() >= 0.12:
                break
        return affine(x, np.eye(ndim), t * np.array(x.shape))

    def rotate_large(x, bg):
        return affine(x, rotation(sign() * rng.uniform(12, 30), ndim, int(rng.integers(0, 3)) if ndim == 3 else 0),
                      np.zeros(ndim))

    def crop_large(x, bg):
        if ndim == 2:
            area, ratio = rng.uniform(0.40, 0.64), np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
            frac = np.clip(np.array([np.sqrt(area * ratio), np.sqrt(area / ratio)]), 0.5, 1.0)
        else:
            frac = rng.uniform(0.63, 0.80, 3)
        size = np.maximum(4, np.round(frac * np.array(x.shape)).astype(int))
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, size)]
        return resize(x[tuple(slice(a, a + c) for a, c in zip(start, size))], x.shape)

    def compound(x, bg):
        angle = rng.uniform(-8, 8)
        matrix = rotation(angle, ndim, int(rng.integers(0, 3)) if ndim == 3 else 0) / rng.uniform(0.9, 1.1)
        y = affine(x, matrix, rng.uniform(-0.08, 0.08, ndim) * np.array(x.shape))
        y = np.clip(y, 0, 1) ** rng.uniform(0.7, 1.4)
        y = (y - y.mean()) * rng.uniform(0.7, 1.3) + y.mean()
        return y + rng.normal(0, rng.uniform(0.02, 0.04), x.shape)

    def elastic(x, bg):
        amplitude = rng.uniform(3, 6) if ndim == 2 else rng.uniform(1.5, 3)
        smooth = rng.uniform(10, 16) if ndim == 2 else rng.uniform(4, 6)
        grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in x.shape], indexing="ij")
        coords = []
        for axis in range(ndim):
            field = gaussian_filter(rng.uniform(-1, 1, x.shape), smooth)
            field *= amplitude / max(np.abs(field).max(), 1e-12)
            coords.append(grid[axis] + field)
        return map_coordinates(x, coords, order=1, mode="reflect")

    def resolution_loss(x, bg):
        factor = rng.uniform(2.5, 4) if ndim == 2 else rng.uniform(2, 3)
        small = resize(x, np.maximum(4, np.round(np.array(x.shape) / factor)))
        return resize(small, x.shape)

    def clahe(x, bg):
        kernel = max(4, int(round(x.shape[0] * rng.uniform(1 / 8, 1 / 4))))
        return equalize_adapthist(np.clip(x, 0, 1), kernel_size=kernel, clip_limit=rng.uniform(0.01, 0.03))

    def intensity_curve(x, bg):
        return adjust_sigmoid(np.clip(x, 0, 1), cutoff=rng.uniform(0.35, 0.65), gain=rng.uniform(5, 10))

    def occlusion(x, bg):
        y = x.copy()
        volume = rng.uniform(0.20, 0.35) * x.size
        if ndim == 2:
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2)))
            size = np.array([np.sqrt(volume * aspect), np.sqrt(volume / aspect)])
        else:
            size = np.full(3, volume ** (1 / 3))
        size = np.minimum(np.round(size).astype(int), np.array(x.shape))
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, size)]
        box = tuple(slice(a, a + c) for a, c in zip(start, size))
        y[box] = rng.uniform(0, 1) if rng.random() < 0.5 else rng.uniform(0, 1, size)
        return y

    def partial(low, high):
        def paste(x, bg):
            size = np.round(rng.uniform(low, high, ndim) * np.array(x.shape)).astype(int)
            a = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, size)]
            b = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, size)]
            y = bg.copy()
            y[tuple(slice(p, p + c) for p, c in zip(b, size))] = x[tuple(slice(p, p + c) for p, c in zip(a, size))]
            return y
        return paste

    def jpeg_heavy(x, bg):
        return jpeg_slices(x, int(rng.integers(10, 26)))

    def noise_heavy(x, bg):
        return x + rng.normal(0, rng.uniform(0.06, 0.10), x.shape)

    def blur_heavy(x, bg):
        return gaussian_filter(x, rng.uniform(2, 3) if ndim == 2 else rng.uniform(1.5, 2))

    fns = {"shift_large": shift_large, "rotate_large": rotate_large, "crop_large": crop_large,
           "compound": compound, "elastic": elastic, "resolution_loss": resolution_loss, "clahe": clahe,
           "intensity_curve": intensity_curve, "occlusion": occlusion,
           "partial_large": partial(0.45, 0.65) if ndim == 2 else partial(0.5, 0.7),
           "partial_small": partial(0.30, 0.45) if ndim == 2 else partial(0.35, 0.5),
           "jpeg_heavy": jpeg_heavy, "noise_heavy": noise_heavy, "blur_heavy": blur_heavy}
    assert tuple(fns) == FAMILIES
    return fns


def split_four(groups: list[str], seed: int):
    """Indices of train / holdout / novel / background by group."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    bounds = np.cumsum([int(round(f * len(unique))) for f in SPLIT[:3]])
    role = {g: int(np.searchsorted(bounds, i, side="right")) for i, g in enumerate(unique)}
    roles = np.array([role[g] for g in groups])
    return [np.flatnonzero(roles == r) for r in range(4)]


def score_domain(domain: str, raw_pool: list, scorer_names: list[str], seed: int, options: dict) -> dict:
    """Split, plant the families' copies, run every scorer on holdout + novel + copies (the record
    `domain_tables` of bench_replicas.py reads)."""
    from attacks.replicas.registry import make_scorer
    from audit.registry import Runtime

    kept, dropped = deduplicate(raw_pool)
    images = np.stack([p[0] for p in kept]).astype(np.float32)
    groups = [p[1] for p in kept]
    train_idx, hold_idx, novel_idx, back_idx = split_four(groups, seed)
    train, holdout, novel, background = (images[i] for i in (train_idx, hold_idx, novel_idx, back_idx))
    ndim = images.ndim - 1
    copies = COPIES_2D if ndim == 2 else COPIES_3D
    copy_sets, sources = [], []
    for f, name in enumerate(FAMILIES):
        rng = np.random.default_rng([seed, f])  # one generator per family: a family's copies do not depend on others
        src = rng.choice(len(train), size=min(copies, len(train)), replace=False)
        bgs = rng.choice(len(background), size=len(src), replace=len(src) > len(background))
        family = make_families(rng, ndim)[name]
        copy_sets.append(np.stack([quantise(family(train[i], background[b])) for i, b in zip(src, bgs)]))
        sources.append(src)
    replicas = np.concatenate(copy_sets)
    queries = np.concatenate([holdout, novel, replicas])
    image_sources = np.array([source_of(g) for g in groups])
    composition = {split: {str(s): int(n) for s, n in zip(*np.unique(image_sources[idx], return_counts=True))}
                   for split, idx in (("train", train_idx), ("holdout", hold_idx), ("novel", novel_idx),
                                      ("background", back_idx))}
    print(f"[{domain}] pool {len(images)} (-{dropped}) → train {len(train)}, holdout {len(holdout)}, novel "
          f"{len(novel)}, background {len(background)}, copies {len(replicas)}; {composition}", flush=True)
    record = {"domain": np.array(domain), "scorers": np.array(scorer_names), "n_train": len(train),
              "n_holdout": len(holdout), "n_novel": len(novel), "replicas_per_transform": copies,
              "transforms": np.array(FAMILIES), "sources": np.concatenate(sources),
              "query_sources": image_sources[np.r_[hold_idx, novel_idx]],
              "meta": np.array(json.dumps({"pool": len(images), "deduplicated_away": dropped,
                                           "composition": composition, "seed": seed, "benchmark": "heldout"}))}
    seconds = []
    runtime = Runtime(device="cpu", batch_size=64, seed=0)
    for name in scorer_names:
        t0 = time.perf_counter()
        result = make_scorer(name, options.get(name), runtime).fit(train).score(queries)
        record[f"score_{name}"] = np.asarray(result.scores, np.float64)
        record[f"nearest_{name}"] = np.asarray(result.nearest)
        seconds.append(time.perf_counter() - t0)
        print(f"[{domain}] {name}: {seconds[-1]:.1f} s for {len(queries)} queries × {len(train)} train", flush=True)
    record["seconds"] = np.array(seconds)
    return record


def main(make_pool=None, default_seed: int = SEED, results_prefix: str = "heldout_seed",
         description: str = __doc__) -> None:
    """The command line; `make_pool`, `default_seed` and `results_prefix` let a later version of the benchmark
    (bench_replicas_heldout_v2.py) reuse it with its own pool and seeds."""
    make_pool = make_pool or pool
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--seed", type=int, default=default_seed)
    parser.add_argument("--domains", default="2D,3D")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--save-scores", action="store_true", help="write DIR/scores_{2D,3D}.npz beside --out")
    parser.add_argument("--from-scores", metavar="DIR", help="tables only, from DIR/scores_{2D,3D}.npz")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/heldout_seed<S>/"
                                                    "heldout.json)")
    args = parser.parse_args()
    out = Path(args.out or (Path(args.from_scores) / "heldout.json" if args.from_scores
                            else f"benchmarks/results/{results_prefix}{args.seed}/heldout.json"))
    import torch

    torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.scorers.split(",") if s.strip()]
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                 "torch_threads": args.threads, "torch": torch.__version__,
                                 "load_average_at_start": os.getloadavg()},
                     "scorers": names, "quantile": args.quantile, "seed": args.seed, "accuracy": []}
    work = Path(tempfile.mkdtemp(prefix="bench-heldout-"))
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        if args.from_scores:
            record = load_scores(Path(args.from_scores) / f"scores_{domain}.npz")
        else:
            record = score_domain(domain, make_pool(domain, work), names, args.seed, {})
            if args.save_scores:
                print(f"[{domain}] scores written to {save_scores(record, out.parent)}", flush=True)
        results["accuracy"].append(domain_tables(record, args.quantile, comparisons=False, reference="default"))
    results["seconds_total"] = time.perf_counter() - t0
    from bench_replicas import markdown

    write_results(results, markdown(results, FAMILIES), out)


if __name__ == "__main__":
    main()
