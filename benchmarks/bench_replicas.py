"""Replica-detection accuracy benchmark: planted replicas in real images + phantoms.

    .venv/bin/python benchmarks/bench_replicas.py [--scorers ncc,ssim] [--threads 1] [--quick] [--save-scores]
        [--out benchmarks/results/bench_replicas_accuracy.json] [--seed S]
    .venv/bin/python benchmarks/bench_replicas.py --from-scores DIR [--out JSON]   (tables only, no scoring)

Accuracy. Image pools nobody here drew by hand:
- 2D (128 × 128): non-overlapping tiles of the pydicom-data radiographs RG1 (CR chest), RG3 (CR), MR2 (MR),
  693 (CT) and CT_small; slices of nilearn's MNI152 T1 template in the three planes, 8 mm apart; one image per
  view of `write_mammo_phantom` patients (split by patient).
- 3D (32³): non-overlapping 24 mm cubes of the MNI152 T1 template (1 mm), resized to 32³; `write_brain3d_phantom`
  heads at 96³, each cut into non-overlapping 32³ cubes of which the informative ones are kept (split by head).
Each pool is first de-duplicated: an image whose NCC with an already kept image of another group exceeds 0.95
is dropped (neighbouring tiles of flat regions and nearby template slices are pixel-level near-duplicates, i.e.
unlabelled replicas that would make "novel" ground truth wrong). Each pool is then split by group (patient / tile
/ slice / cube) into train 45%, holdout 20% (the calibration null) and novel 35% (test negatives, never copied).
Replicas: copies of random training images under each transformation (albumentations 2.0.8 in 2D, MONAI / scipy
in 3D). Per scorer and transformation: AUC and TPR at 1% FPR of replicas vs novel images, TPR and
FPR at the threshold calibrated on the holdout (q = 0.99), and how often the reported nearest training image is
the replica's source. The run is two halves: `score_domain` (pools, replicas, scorers → the raw scores, which
--save-scores writes as DIR/scores_{2D,3D}.npz) and `domain_tables` (combiners from attacks/replicas/combined.py,
calibration, the tables); --from-scores DIR runs only the second half on saved scores.

The search's speed (throughput, SSIM top-1 search, memory) is measured by bench_search_speed.py.

Nothing is downloaded: pydicom-data, nilearn's bundled template and the phantom writers are local.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

TRANSFORMS = ("exact", "flip", "shift", "rotate", "gamma", "noise", "blur", "jpeg", "crop_resize", "contrast")
SIZE_2D = (128, 128)
SIZE_3D = (32, 32, 32)
VOXEL_SCORERS = ("ncc", "ssim", "ncc_shift", "ncc_zoom", "ncc_reg")
MAMMO_PATIENTS = 330  # 2D phantom patients (four views each)
BRAIN_PATIENTS = 100  # 3D phantom heads at 96³ (about seven informative 32³ cubes each)
SPLIT_FRACTIONS = (0.45, 0.2)  # train, holdout (groups); the rest (0.35) is novel


# =============================================================================================== image pools


def unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def informative(image: np.ndarray, min_std: float = 0.05, max_flat: float = 0.5) -> bool:
    """Not mostly background: enough contrast and not dominated by one flat value."""
    flat = np.mean(np.abs(image - np.median(image)) < 0.02)
    return float(image.std()) > min_std and flat < max_flat


def radiograph_tiles() -> list[tuple[np.ndarray, str]]:
    import pydicom.data

    from audit.data.imageio import fit_to_shape, read_image, to_unit_range

    out = []
    for name, tile in (("RG1_UNCI.dcm", 256), ("RG3_UNCI.dcm", 256), ("MR2_UNCI.dcm", 192), ("693_UNCI.dcm", 128),
                       ("CT_small.dcm", 128)):
        image = to_unit_range(read_image(pydicom.data.get_testdata_file(name)))
        for r in range(0, image.shape[0] - tile + 1, tile):
            for c in range(0, image.shape[1] - tile + 1, tile):
                crop = unit(image[r:r + tile, c:c + tile])
                if informative(crop):
                    out.append((fit_to_shape(crop, SIZE_2D), f"{name}:{r},{c}"))
    return out


def mni_template() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    return unit(np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32))


def mni_slices(volume: np.ndarray, step: int = 8) -> list[tuple[np.ndarray, str]]:
    from audit.data.imageio import fit_to_shape

    out = []
    for axis in range(3):
        for i in range(step, volume.shape[axis] - step, step):
            sl = np.take(volume, i, axis=axis)
            if np.mean(sl > 0.05) > 0.25:
                out.append((fit_to_shape(unit(sl), SIZE_2D), f"mni:axis{axis}:{i}"))
    return out


def mni_cubes(volume: np.ndarray, side: int = 24) -> list[tuple[np.ndarray, str]]:
    """Non-overlapping side³ mm cubes (mostly brain, some contrast), resized to SIZE_3D."""
    from audit.data.imageio import fit_to_shape

    out = []
    for z in range(0, volume.shape[0] - side + 1, side):
        for y in range(0, volume.shape[1] - side + 1, side):
            for x in range(0, volume.shape[2] - side + 1, side):
                cube = volume[z:z + side, y:y + side, x:x + side]
                if np.mean(cube > 0.05) > 0.5 and cube.std() > 0.05:
                    out.append((fit_to_shape(unit(cube), SIZE_3D), f"mni:{z},{y},{x}"))
    return out


def mammo_phantom_views(patients: int, work: Path, seed: int = 11) -> list[tuple[np.ndarray, str]]:
    from audit.data.imageio import fit_to_shape, read_image, to_unit_range
    from audit.data.phantoms import write_mammo_phantom

    root = work / "mammo"
    write_mammo_phantom(root, patients=patients, seed=seed, image_size=(256, 208))
    out = []
    for path in sorted(root.glob("images/*/*.dicom")):
        out.append((fit_to_shape(to_unit_range(read_image(path)), SIZE_2D), f"mammo:{path.parent.name}"))
    return out


def brain_phantom_cubes(patients: int, work: Path, seed: int = 12, head: int = 96) -> list[tuple[np.ndarray, str]]:
    """`write_brain3d_phantom` heads at head³, each cut into non-overlapping SIZE_3D cubes; the informative ones
    (inside the head: about 7 of 27 at 96³) are kept, grouped by patient so that a head never straddles splits."""
    from audit.data.imageio import read_image, to_unit_range
    from audit.data.phantoms import write_brain3d_phantom

    root = work / "brain"
    write_brain3d_phantom(root, patients=patients, seed=seed, shape=(head,) * 3, scans_per_patient=1)
    side = SIZE_3D[0]
    out = []
    for path in sorted(root.glob("volumes/*.nii.gz")):
        volume = to_unit_range(read_image(path))
        for z in range(0, head - side + 1, side):
            for y in range(0, head - side + 1, side):
                for x in range(0, head - side + 1, side):
                    cube = unit(volume[z:z + side, y:y + side, x:x + side])
                    if informative(cube):
                        out.append((cube, f"brain:{path.name}"))
    return out


def pool_2d(volume: np.ndarray, work: Path, mammo_patients: int) -> list[tuple[np.ndarray, str]]:
    return radiograph_tiles() + mni_slices(volume) + mammo_phantom_views(mammo_patients, work)


def pool_3d(volume: np.ndarray, work: Path, brain_patients: int) -> list[tuple[np.ndarray, str]]:
    return mni_cubes(volume) + brain_phantom_cubes(brain_patients, work)


def source_of(group: str) -> str:
    """The source a group name comes from: "mammo", "mni", "brain" or the radiograph's file name."""
    return group.split(":")[0]


# =============================================================================================== transformations


def transforms_2d(seed: int) -> dict:
    import albumentations as A
    import cv2

    reflect = cv2.BORDER_REFLECT_101
    spec = {
        "exact": [],
        "flip": [A.OneOf([A.HorizontalFlip(p=1), A.VerticalFlip(p=1)], p=1)],
        "shift": [A.Affine(translate_percent=(-0.1, 0.1), border_mode=reflect, p=1)],
        "rotate": [A.Rotate(limit=10, border_mode=reflect, p=1)],
        "gamma": [A.RandomGamma(gamma_limit=(70, 140), p=1)],
        "noise": [A.GaussNoise(std_range=(0.02, 0.05), p=1)],
        "blur": [A.GaussianBlur(sigma_limit=(0.5, 1.5), p=1)],
        "jpeg": [A.ImageCompression(quality_range=(30, 70), p=1)],
        "crop_resize": [A.RandomResizedCrop(size=SIZE_2D, scale=(0.8, 0.95), ratio=(0.9, 1.1), p=1)],
        "contrast": [A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.4, 0.4), p=1)],
    }
    out = {}
    for i, (name, ops) in enumerate(spec.items()):
        compose = A.Compose(ops, seed=seed + i)  # albumentations' own RNG: global seeds are ignored

        def apply(image, compose=compose):
            return np.clip(compose(image=image.astype(np.float32))["image"], 0, 1).astype(np.float32)

        out[name] = apply
    return out


def transforms_3d(seed: int) -> dict:
    import torch
    from monai.transforms import Affine, GaussianSmooth
    from PIL import Image

    from audit.data.imageio import fit_to_shape

    rng = np.random.default_rng(seed)

    def affine(image, rotate=(0.0, 0.0, 0.0), translate=(0.0, 0.0, 0.0)):
        t = Affine(rotate_params=rotate, translate_params=translate, padding_mode="reflection", image_only=True)
        return np.asarray(t(torch.from_numpy(image[None]))[0], dtype=np.float32)

    def flip(x):
        return np.ascontiguousarray(np.flip(x, axis=int(rng.integers(0, 3))))

    def shift(x):
        return affine(x, translate=tuple(rng.uniform(-0.1, 0.1, 3) * np.array(x.shape)))

    def rotate(x):
        angles = np.zeros(3)
        angles[rng.integers(0, 3)] = np.deg2rad(rng.uniform(-10, 10))
        return affine(x, rotate=tuple(angles))

    def jpeg(x):
        import io

        quality = int(rng.integers(30, 71))
        out = np.empty_like(x)
        for i, sl in enumerate(x):  # slice-wise lossy compression (no volumetric JPEG)
            buf = io.BytesIO()
            Image.fromarray(np.round(sl * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
            out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
        return out

    def crop_resize(x):
        frac = rng.uniform(0.8, 0.95, 3)
        size = np.maximum(4, np.round(frac * x.shape).astype(int))
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(x.shape, size)]
        crop = x[tuple(slice(a, a + c) for a, c in zip(start, size))]
        return fit_to_shape(crop, x.shape)

    def contrast(x):
        c = rng.uniform(0.6, 1.4)
        return (x - x.mean()) * c + x.mean()

    fns = {
        "exact": lambda x: x.copy(),
        "flip": flip, "shift": shift, "rotate": rotate,
        "gamma": lambda x: x ** rng.uniform(0.7, 1.4),
        "noise": lambda x: x + rng.normal(0, rng.uniform(0.02, 0.05), x.shape),
        "blur": lambda x: np.asarray(GaussianSmooth(sigma=float(rng.uniform(0.5, 1.0)))(torch.from_numpy(x[None]))[0]),
        "jpeg": jpeg, "crop_resize": crop_resize, "contrast": contrast,
    }
    return {k: (lambda x, f=f: np.clip(f(x), 0, 1).astype(np.float32)) for k, f in fns.items()}


# =============================================================================================== accuracy


def deduplicate(pool: list[tuple[np.ndarray, str]], max_ncc: float = 0.95,
                seed: int = 0) -> tuple[list[tuple[np.ndarray, str]], int]:
    """Greedy, in a seeded random order: keep an image unless it has NCC > max_ncc with a kept image of another
    group. Returns the kept pool and how many were dropped."""
    from audit.search import topk_similarity

    images = np.stack([p[0] for p in pool])
    scores, index = topk_similarity(images, images, k=min(20, len(pool)), metric="ncc")
    order = np.random.default_rng(seed).permutation(len(pool))
    kept = np.zeros(len(pool), bool)
    for i in order:
        clash = [j for s, j in zip(scores[i], index[i]) if s > max_ncc and kept[j] and pool[j][1] != pool[i][1]]
        kept[i] = not clash
    return [p for p, k in zip(pool, kept) if k], int((~kept).sum())


def cached_pool(domain: str, directory: Path | None, build, key: dict) -> tuple[list[tuple[np.ndarray, str]], int]:
    """The de-duplicated pool of a domain: from `directory` when an earlier run with the same sizes left it there,
    else built (`build()`), de-duplicated and (with a directory) saved."""
    path = None if directory is None else directory / f"pool_{domain}_{json.dumps(key, sort_keys=True)}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return list(zip(data["images"], [str(g) for g in data["groups"]])), int(data["dropped"])
    pool, dropped = deduplicate(build())
    if path is not None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=np.stack([p[0] for p in pool]), groups=np.array([p[1] for p in pool]), dropped=dropped)
    return pool, dropped


def split_by_group(groups: list[str], fractions: tuple[float, float], seed: int):
    """Indices of train / holdout / novel; all images of a group (patient, tile) land in one set."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n_train = int(round(fractions[0] * len(unique)))
    n_hold = int(round(fractions[1] * len(unique)))
    role = {g: (0 if i < n_train else 1 if i < n_train + n_hold else 2) for i, g in enumerate(unique)}
    idx = np.arange(len(groups))
    roles = np.array([role[g] for g in groups])
    return idx[roles == 0], idx[roles == 1], idx[roles == 2]


def score_domain(domain: str, pool: list[tuple[np.ndarray, str]], deduplicated_away: int, transforms: dict,
                 scorer_names: list[str], n_replicas: int, seed: int, runtime) -> dict:
    """The scoring half: split the pool, plant the replicas, run every scorer on holdout + novel + replicas.

    Returns the scores record — everything `domain_tables` needs, as arrays (what --save-scores writes):
    domain, scorers (in the listed order), n_train, n_holdout, n_novel, replicas_per_transform, transforms,
    sources (the replicas' training indices, transformation-major), seconds (per scorer, fit + all queries),
    score_<scorer> and nearest_<scorer> (holdout, then novel, then the replicas), and meta (JSON: pool size,
    de-duplicated count, sources per split, seed)."""
    from attacks.replicas.registry import make_scorer

    images = np.stack([p[0] for p in pool]).astype(np.float32)
    groups = [p[1] for p in pool]  # tiles, slices, cubes: one group each; phantom views and cubes: their patient
    train_idx, hold_idx, novel_idx = split_by_group(groups, SPLIT_FRACTIONS, seed)
    train, holdout, novel = images[train_idx], images[hold_idx], images[novel_idx]
    rng = np.random.default_rng(seed + 1)
    replica_sets, sources = [], []
    for name, fn in transforms.items():
        src = rng.choice(len(train), size=min(n_replicas, len(train)), replace=False)
        replica_sets.append(np.stack([fn(train[i]) for i in src]))
        sources.append(src)
    replicas = np.concatenate(replica_sets)
    queries = np.concatenate([holdout, novel, replicas])
    n_h, n_n = len(holdout), len(novel)
    image_sources = np.array([source_of(g) for g in groups])
    composition = {split: {str(src): int(n) for src, n in zip(*np.unique(image_sources[idx], return_counts=True))}
                   for split, idx in (("train", train_idx), ("holdout", hold_idx), ("novel", novel_idx))}
    print(f"[{domain}] pool {len(images)} → train {len(train)}, holdout {n_h}, novel {n_n}, "
          f"replicas {len(replicas)} ({len(transforms)} × {len(replica_sets[0])}); sources {composition}",
          flush=True)

    record = {"domain": np.array(domain), "scorers": np.array(scorer_names), "n_train": len(train),
              "n_holdout": n_h, "n_novel": n_n, "replicas_per_transform": len(replica_sets[0]),
              "transforms": np.array(list(transforms)), "sources": np.concatenate(sources),
              # where each holdout and novel image comes from (mammo, mni, brain, a radiograph's file name)
              "query_sources": image_sources[np.r_[hold_idx, novel_idx]],
              "meta": np.array(json.dumps({"pool": len(images), "deduplicated_away": deduplicated_away,
                                           "composition": composition, "seed": seed}))}
    seconds = []
    for name in scorer_names:
        t0 = time.perf_counter()
        scorer = make_scorer(name, None, runtime)
        result = scorer.fit(train).score(queries)
        record[f"score_{name}"] = np.asarray(result.scores, np.float64)
        record[f"nearest_{name}"] = np.asarray(result.nearest)
        seconds.append(time.perf_counter() - t0)
        print(f"[{domain}] {name}: {seconds[-1]:.1f} s for {len(queries)} queries × {len(train)} train", flush=True)
    record["seconds"] = np.array(seconds)
    return record


def save_scores(record: dict, directory: Path) -> Path:
    path = Path(directory) / f"scores_{record['domain']}.npz"
    np.savez(path, **record)
    return path


def load_scores(path: Path) -> dict:
    with np.load(path) as data:
        record = {key: data[key] for key in data.files}
    missing = {"domain", "scorers", "n_train", "replicas_per_transform", "seconds", "meta"} - set(record)
    if missing:
        raise SystemExit(f"{path}: no {', '.join(sorted(missing))} — written before --from-scores existed; "
                         f"re-run the benchmark with --save-scores")
    return record


def merge_scores(saved: dict, fresh: dict) -> dict:
    """`saved` with the scorers of `fresh` replaced (or added): both must come from the same split and replicas
    (sizes, transformations, sources and seed are compared). The merged meta lists, per re-scored scorer, when it
    was re-scored, so a table built from mixed runs says so."""
    for key in ("domain", "n_train", "n_holdout", "n_novel", "replicas_per_transform", "transforms", "sources"):
        if not np.array_equal(np.asarray(saved[key]), np.asarray(fresh[key])):
            raise SystemExit(f"--update-scores: the saved scores differ from this run in '{key}' "
                             f"(another seed, pool or transformation list?)")
    saved_meta, fresh_meta = json.loads(str(saved["meta"])), json.loads(str(fresh["meta"]))
    if saved_meta.get("seed") != fresh_meta.get("seed"):
        raise SystemExit(f"--update-scores: saved seed {saved_meta.get('seed')}, this run {fresh_meta.get('seed')}")
    merged = dict(saved)
    if "query_sources" in fresh:  # scores saved before the per-image sources were recorded gain them
        if "query_sources" in saved and not np.array_equal(saved["query_sources"], fresh["query_sources"]):
            raise SystemExit("--update-scores: the saved scores differ from this run in 'query_sources'")
        merged["query_sources"] = fresh["query_sources"]
    names = [str(n) for n in saved["scorers"]]
    seconds = dict(zip(names, map(float, saved["seconds"])))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for i, name in enumerate(str(n) for n in fresh["scorers"]):
        if name not in names:
            names.append(name)
        merged[f"score_{name}"], merged[f"nearest_{name}"] = fresh[f"score_{name}"], fresh[f"nearest_{name}"]
        seconds[name] = float(fresh["seconds"][i])
        saved_meta.setdefault("rescored", {})[name] = when
    merged["scorers"], merged["seconds"] = np.array(names), np.array([seconds[n] for n in names])
    merged["meta"] = np.array(json.dumps(saved_meta))
    return merged


# the default set and rule of session 4 (2026-12-01 00:00 – 03:01): five scorers, level_gate with the as-is ncc
# level, no holdout leak screen
SESSION4_DEFAULT = ("ncc", "ssim", "ncc_reg", "ncc_reg_coarse", "ncc_local")


def runnable_members(members: tuple[str, ...], domain: str) -> list[str]:
    """The preset's scorers that run on the domain's images (`audit replicas` skips the others with their reason,
    e.g. the 2D-only `ncc_fm` on volumes)."""
    from attacks.replicas.registry import make_scorer

    shape = (32, 32, 32) if domain == "3D" else (128, 128)
    return [n for n in members if make_scorer(n).unsupported(shape) is None]


def domain_tables(record: dict, quantile: float, comparisons: bool = True, reference: str = "combined") -> dict:
    """The table half: from a scores record (fresh or loaded), the combiners of attacks/replicas/combined.py
    fitted on the holdout, then per scorer and combiner the calibrated threshold and per transformation AUC,
    TPR at 1% FPR, TPR and FPR at the calibrated threshold, and how often the nearest training image is the
    replica's source.

    Combiners: `combined` (the suite's rule over every scored scorer), `default` and `fast` (the same rule over
    the members of those presets, when all were scored: what a user gets), `default_local_gate` and `default_tail_p`
    (the default set under the earlier rules `local_gate` and `tail_p`), `default_s4` (session 4's default: the five
    scorers without `ncc_fm`, no holdout leak screen) and `default_s4_screened` (the same with the screen), for
    before/after on the same scores, and with `comparisons` the earlier
    definitions (equal weights, max-z) and the voxel scorers alone. Single scorers are compared (paired
    bootstrap) with `reference`."""
    from attacks.replicas.calibrate import calibrate
    from attacks.replicas.combined import MaxZCombiner, TailPCombiner, calibration_rows, make_combiner
    from attacks.replicas.registry import PRESETS
    from audit.metrics.statistics import rate_estimate, roc_auc, tpr_at_fpr

    domain = str(record["domain"])
    scorer_names = [str(n) for n in record["scorers"]]
    transforms = [str(t) for t in record["transforms"]]
    n_h, n_n = int(record["n_holdout"]), int(record["n_novel"])
    sources = np.split(np.asarray(record["sources"]), len(transforms))
    meta = json.loads(str(record["meta"]))
    scores = {n: np.asarray(record[f"score_{n}"], np.float64) for n in scorer_names}
    nearest = {n: np.asarray(record[f"nearest_{n}"]) for n in scorer_names}
    holdout_scores = {n: s[:n_h] for n, s in scores.items()}
    nearest_by_scorer = np.stack([nearest[n] for n in scorer_names], 1)
    # the suite's definition (its default rule, `level_gate` since 2026-12-01) over every scorer
    combiners = {"combined": make_combiner().fit(holdout_scores)}
    presets = {p: runnable_members(members, domain) for p, members in PRESETS.items()}
    for preset, members in presets.items():  # what `audit replicas` runs by default, and --preset fast
        if set(members) <= set(scorer_names):
            combiners[preset] = make_combiner().fit({n: holdout_scores[n] for n in members})
    if set(presets["default"]) <= set(scorer_names):  # the default set under the rules it had before
        default_holdout = {n: holdout_scores[n] for n in presets["default"]}
        combiners["default_local_gate"] = make_combiner("local_gate").fit(default_holdout)  # 2026-11-30 evening
    if set(SESSION4_DEFAULT) <= set(scorer_names):  # before/after session 5 (the leak screen, then ncc_fm)
        five = {n: holdout_scores[n] for n in SESSION4_DEFAULT}
        combiners["default_s4"] = make_combiner("level_gate", {"leak_alpha": None, "as_is": ["ncc"]}).fit(five)
        combiners["default_s4_screened"] = make_combiner("level_gate", {"as_is": ["ncc"]}).fit(five)
        combiners["default_tail_p"] = TailPCombiner().fit(default_holdout)  # before the local gate
    if comparisons:
        # the same with equal weights (the suite's rule before ncc_reg existed), and the first definition
        combiners["combined_equal_w"] = TailPCombiner(primary_weight=None).fit(holdout_scores)
        combiners["combined_max_z"] = MaxZCombiner().fit(holdout_scores)
        voxel = [n for n in scorer_names if n in VOXEL_SCORERS]
        if 0 < len(voxel) < len(scorer_names):  # the voxel levels alone, beside all levels together
            combiners["combined_voxel"] = TailPCombiner().fit({n: holdout_scores[n] for n in voxel})
    single = dict(scores)
    for cname, combiner in combiners.items():
        used = combiner.scorers
        combined, decisive = combiner.combine({n: single[n] for n in used})
        scores[cname] = combined
        columns = [scorer_names.index(n) for n in used]
        nearest[cname] = nearest_by_scorer[:, columns][np.arange(len(combined)), decisive]

    rows, calibration, calibration_left_out = [], {}, {}
    for name, s in scores.items():
        kept = calibration_rows(combiners[name], n_h) if name in combiners else np.ones(n_h, bool)
        cal = calibrate(name, s[:n_h][kept], s[n_h + n_n:], quantile)  # a rule may leave overlapping holdout out
        if not kept.all():
            calibration_left_out[name] = int((~kept).sum())
        neg = s[n_h:n_h + n_n]
        fpr_cal = rate_estimate(int((neg > cal.threshold).sum()), n_n)
        calibration[name] = {"threshold": cal.threshold, "novel_fpr": fpr_cal.to_dict()}
        if "query_sources" in record:  # which kinds of novel image the threshold lets through
            novel_sources = np.asarray(record["query_sources"])[n_h:n_h + n_n]
            calibration[name]["novel_flagged_by_source"] = {
                str(src): [int((neg[novel_sources == src] > cal.threshold).sum()), int((novel_sources == src).sum())]
                for src in np.unique(novel_sources)}
        offset = n_h + n_n
        for tname, src in zip(transforms, sources):
            pos = s[offset:offset + len(src)]
            near = nearest[name][offset:offset + len(src)]
            offset += len(src)
            labels = np.r_[np.ones(len(pos), bool), np.zeros(n_n, bool)]
            both = np.r_[pos, neg]
            rows.append({"domain": domain, "scorer": name, "transform": tname, "n_pos": len(pos), "n_neg": n_n,
                         "auc": roc_auc(labels, both), "tpr_at_1pct_fpr": tpr_at_fpr(labels, both, 0.01),
                         "tpr_calibrated": float(np.mean(pos > cal.threshold)),
                         "fpr_calibrated": fpr_cal.value, "nearest_is_source": float(np.mean(near == src))})
    reference = reference if reference in scores else "combined"  # e.g. a run without every default scorer
    better = better_than_combined(scores, scorer_names, n_h, n_n, transforms, sources, reference)
    return {"domain": domain, "sizes": {"train": int(record["n_train"]), "holdout": n_h, "novel": n_n,
                                        "replicas_per_transform": int(record["replicas_per_transform"]),
                                        "pool": meta["pool"], "deduplicated_away": meta["deduplicated_away"],
                                        "sources": meta["composition"]},
            "seconds": dict(zip(scorer_names, map(float, record["seconds"]))), "calibration": calibration,
            "rows": rows, "combiners": {n: c.describe() for n, c in combiners.items()},
            "better_than_combined": better, "reference": reference, "rescored": meta.get("rescored", {}),
            "holdout_left_out_of_calibration": calibration_left_out}


def better_than_combined(scores: dict, scorer_names: list[str], n_h: int, n_n: int, transforms: list[str],
                         sources: list, reference: str = "combined", n_boot: int = 1000) -> list[dict]:
    """Where a single scorer beats `reference` (higher AUC or TPR at 1% FPR on a transformation): the paired
    difference with a 95% bootstrap interval (replicas and novel images resampled within their class, both
    scores of an image kept together). "Significant" when the interval lies above 0."""
    from audit.metrics.statistics import bootstrap_ci, roc_auc, tpr_at_fpr

    def tpr(labels, x):
        return tpr_at_fpr(labels, x, 0.01)

    out = []
    combined = scores[reference]
    neg = slice(n_h, n_h + n_n)
    offset = n_h + n_n
    for t, src in enumerate(sources):
        pos = slice(offset, offset + len(src))
        offset += len(src)
        labels = np.r_[np.ones(len(src), bool), np.zeros(n_n, bool)]
        c = np.r_[combined[pos], combined[neg]]
        for name in scorer_names:
            x = np.r_[scores[name][pos], scores[name][neg]]
            for metric_name, metric in (("auc", roc_auc), ("tpr_at_1pct_fpr", tpr)):
                diff = metric(labels, x) - metric(labels, c)
                if diff <= 0:
                    continue
                lo, hi = bootstrap_ci(lambda lab, a, b: metric(lab, a) - metric(lab, b), labels, x, c,
                                      n_boot=n_boot, seed=t, strata=labels)
                out.append({"transform": transforms[t], "scorer": name, "metric": metric_name, "difference": diff,
                            "ci_low": lo, "ci_high": hi, "significant": bool(lo > 0)})
    return out


# =============================================================================================== report


def fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def markdown(results: dict, order: tuple[str, ...] = TRANSFORMS) -> str:
    lines = []
    for dom in results.get("accuracy", []):
        s = dom["sizes"]
        lines.append(f"\n### {dom['domain']}: train {s['train']}, holdout {s['holdout']}, novel {s['novel']}, "
                     f"{s['replicas_per_transform']} replicas per transformation\n")
        by_split = "; ".join(f"{split} " + ", ".join(f"{src} {n}" for src, n in counts.items())
                             for split, counts in s["sources"].items())
        lines.append(f"Pool {s['pool']} after de-duplication (−{s['deduplicated_away']}); images per source: "
                     f"{by_split}.\n")
        scorers = list(dom["calibration"])
        lines.append("| transformation | " + " | ".join(f"{n} AUC / TPR@1%FPR / TPR@cal" for n in scorers) + " |")
        lines.append("|---|" + "---|" * len(scorers))
        for t in [t for t in order if any(r["transform"] == t for r in dom["rows"])]:
            cells = []
            for n in scorers:
                r = next(x for x in dom["rows"] if x["scorer"] == n and x["transform"] == t)
                cells.append(f"{fmt(r['auc'])} / {fmt(r['tpr_at_1pct_fpr'])} / {fmt(r['tpr_calibrated'])}")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        fprs = ", ".join(f"{n} {dom['calibration'][n]['novel_fpr']['value']:.3f} "
                         f"[{dom['calibration'][n]['novel_fpr']['ci_low']:.3f}, "
                         f"{dom['calibration'][n]['novel_fpr']['ci_high']:.3f}]" for n in scorers)
        lines.append(f"\nFPR on novel images at the calibrated threshold (Wilson 95%): {fprs}.")
        near = ", ".join(f"{n} {np.mean([r['nearest_is_source'] for r in dom['rows'] if r['scorer'] == n]):.3f}"
                         for n in scorers)
        lines.append(f"Nearest training image = the replica's source (mean over transformations): {near}.")
        secs = ", ".join(f"{n} {v:.0f} s" for n, v in dom["seconds"].items())
        lines.append(f"Scoring time (fit + all queries): {secs}.")
        ref = dom.get("reference", "combined")
        by_source = dom["calibration"].get(ref, {}).get("novel_flagged_by_source")
        if by_source:
            lines.append(f"Novel images above `{ref}`'s calibrated threshold, by source (flagged / images): "
                         + ", ".join(f"{src} {f} / {n}" for src, (f, n) in by_source.items()) + ".")
        if dom.get("holdout_left_out_of_calibration"):
            lines.append("Holdout images left out of a rule's calibration (a local score >= 0.999: a region identical "
                         "to a training image; or screened as a near-copy by the holdout leak screen): " + ", ".join(
                             f"{n} {k}" for n, k in dom["holdout_left_out_of_calibration"].items()) + ".")
        if dom.get("rescored"):
            lines.append("Re-scored later with --update-scores (the other scorers' scores are from the first run): "
                         + ", ".join(f"{n} {when}" for n, when in dom["rescored"].items()) + ".")
        better = dom.get("better_than_combined", [])
        listed = "; ".join(f"{b['transform']} {b['scorer']} {'AUC' if b['metric'] == 'auc' else 'TPR@1%FPR'} "
                           f"+{b['difference']:.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}]"
                           f"{' (significant)' if b['significant'] else ''}" for b in better
                           if b["difference"] >= (0.001 if b["metric"] == "auc" else 0.01))  # visible at 3 / 2 digits
        lines.append(f"Single scorers above `{ref}` (difference, paired bootstrap 95%): {listed or 'none'}; "
                     f"significant: {sum(b['significant'] for b in better)}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorers", default="ncc,ssim")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the 2 cores are shared; the peak is measured alike)")
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-scores", action="store_true",
                        help="also write the raw scores per domain (scores_2D.npz, scores_3D.npz) beside --out")
    parser.add_argument("--domains", default="2D,3D", help="accuracy domains to run (default %(default)s)")
    parser.add_argument("--transforms", default=",".join(TRANSFORMS),
                        help="transformations to plant (default: all); a subset for quick runs")
    parser.add_argument("--mammo-patients", type=int, default=MAMMO_PATIENTS,
                        help="2D phantom patients, four views each (default %(default)s)")
    parser.add_argument("--brain-patients", type=int, default=BRAIN_PATIENTS,
                        help="3D phantom heads, each cut into 32³ cubes (default %(default)s)")
    parser.add_argument("--from-scores", metavar="DIR",
                        help="no scoring: recompute the accuracy tables from DIR/scores_{2D,3D}.npz (written by "
                             "--save-scores; scorers, transformations and sizes come from the files)")
    parser.add_argument("--update-scores", metavar="DIR",
                        help="score only --scorers and replace their columns in DIR/scores_{2D,3D}.npz (same "
                             "--seed; the split and replicas are checked to match), keeping the other scorers' "
                             "scores; the tables are then built from the merged scores")
    parser.add_argument("--pool-cache", metavar="DIR",
                        help="keep the de-duplicated image pools in DIR (they do not depend on --seed; building the "
                             "phantoms is most of a run's set-up)")
    parser.add_argument("--out", help="results JSON (and .md beside it); default "
                                      "benchmarks/results/bench_replicas_accuracy.json, with --from-scores "
                                      "DIR/bench_replicas_from_scores.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(Path(args.from_scores) / "bench_replicas_from_scores.json") if args.from_scores \
            else "benchmarks/results/bench_replicas_accuracy.json"

    import torch

    torch.set_num_threads(args.threads)
    scorer_names = [s.strip() for s in args.scorers.split(",") if s.strip()]
    q = args.quick
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                 "torch_threads": args.threads, "torch": torch.__version__,
                                 "load_average_at_start": os.getloadavg()},
                     "scorers": scorer_names, "quantile": args.quantile}
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    volume = None if args.from_scores else mni_template()
    from audit.registry import Runtime

    runtime = Runtime(device="cpu", batch_size=64, seed=0)
    domains = [d.strip() for d in args.domains.split(",")]
    wanted = [t.strip() for t in args.transforms.split(",") if t.strip()]
    results["accuracy"], results["pools"], results["deduplicated_away"] = [], {}, {}
    for domain in domains:
        if args.from_scores:
            record = load_scores(Path(args.from_scores) / f"scores_{domain}.npz")
        else:
            if domain == "2D":
                transforms, n_rep = transforms_2d(args.seed), 30 if q else 100
            else:
                transforms, n_rep = transforms_3d(args.seed), 20 if q else 60
            pool, dropped = cached_pool(domain, Path(args.pool_cache) if args.pool_cache else None,
                                        lambda: pool_2d(volume, work, 20 if q else args.mammo_patients)
                                        if domain == "2D" else pool_3d(volume, work, 10 if q else args.brain_patients),
                                        {"quick": q, "mammo": args.mammo_patients, "brain": args.brain_patients})
            print(f"[{domain}] pool after de-duplication: {len(pool)} (-{dropped})", flush=True)
            record = score_domain(domain, pool, dropped, {t: transforms[t] for t in wanted}, scorer_names,
                                  n_rep, args.seed, runtime)
            if args.update_scores:
                record = merge_scores(load_scores(Path(args.update_scores) / f"scores_{domain}.npz"), record)
                print(f"[{domain}] scores updated in {save_scores(record, Path(args.update_scores))}", flush=True)
            elif args.save_scores:
                print(f"[{domain}] scores written to {save_scores(record, Path(args.out).parent)}", flush=True)
        tables = domain_tables(record, args.quantile)
        results["accuracy"].append(tables)
        results["scorers"] = [str(n) for n in record["scorers"]]
        results["pools"][domain] = tables["sizes"]["pool"]
        results["deduplicated_away"][domain] = tables["sizes"]["deduplicated_away"]
    results["seconds_total"] = time.perf_counter() - t_start
    write_results(results, markdown(results), Path(args.out))


def write_results(results: dict, report: str, out: Path) -> None:
    """Print the report; write the results JSON and the report as Markdown beside it, headed by the command,
    date and machine (shared with bench_search_speed.py)."""
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    machine = results["machine"]
    out.with_suffix(".md").write_text(f"Command: `{results['command']}`, {results['date_utc']} UTC, "
                                      f"{machine['cpu_count']} CPU cores, torch threads {machine['torch_threads']}, "
                                      f"load average at start {machine['load_average_at_start'][0]:.1f}"
                                      f"\n\n{report}\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')} ({results['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
