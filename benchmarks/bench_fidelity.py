"""Fidelity benchmark: does each extractor order image sets as it should, does our FID equal torchmetrics', how
fast is the feature pass beside a plain torchmetrics loop, and what does the real-feature cache save.

    .venv/bin/python benchmarks/bench_fidelity.py ordering [--datasets radiographs,mni,mammo80,brain40]
        [--extractors radiomics,domain,inception-random] [--n-boot 200] [--threads 1]
    .venv/bin/python benchmarks/bench_fidelity.py equality
    .venv/bin/python benchmarks/bench_fidelity.py speed [--repeats 3] [--speed-parts throughput,cache]

Parts (each writes benchmarks/results/bench_fidelity_<part>.json and .md):

- **ordering** — per image set, a reference (training) part and a held-out part of the same distribution with no
  overlapping pixels; the held-out part is then corrupted (blur σ 1 / 3 px in 2D, 0.7 / 2 voxels in 3D; additive
  Gaussian noise σ 0.02 / 0.08, clipped to [0, 1] — strengths fixed before any result was seen) or replaced by
  as many images of an unrelated kind. Expected: FID and KID of held-out < mild < strong < unrelated for both
  corruption families; recall falls under blur and precision under noise (relative to the held-out floor).
  Image sets: `radiographs` (pydicom-data CR chest radiographs RG1/RG3, 128-px tiles → 64², every third tile of a
  checkerboard held out; unrelated = MNI slices), `mni` (MNI152 2009 T1 slices along all three axes, every 2nd
  slice, every third of those held out; unrelated = radiograph tiles), `mammo80` (phantom mammography, train vs
  test split; unrelated = MNI slices), `brain40` (3D phantom heads 32³, train vs test; unrelated = MNI cubes).
  Extractors: `radiomics` (native 2D/3D), `domain` (the SSL encoder trained on each reference part),
  `inception-random` — torch-fidelity's InceptionV3 with *random* weights (Kaiming-normal convolutions so that
  activations keep their scale): real weights cannot be downloaded here, so its rows are a pipeline check only and
  say nothing about how Inception FID behaves on medical images. In 3D, inception reads volumes as 2.5D planes.
- **equality** — our FID (exact routes) against torchmetrics' `FrechetInceptionDistance(feature=module)` and our KID
  against `KernelInceptionDistance` on the same features (radiomics of mammo80, and inception-random end to end
  with torchmetrics calling the same network on the same uint8 images); relative errors; KID on 20 images per side
  (torchmetrics' default subset size fails there).
- **speed** — images/s of our feature pass (`extract_feature_set`: batches from `ImageDataset.iter_images`,
  streaming moments, rows kept for the k-NN metrics) beside a plain torchmetrics `FrechetInceptionDistance.update`
  loop over the same batches on the same extractor module, interleaved (ours then theirs, then theirs then ours,
  ...) so that both see the same load and neither always runs first; and the wall time of `FidelityStage.run` on mammo80 with a cold artefact cache (train, held-out
  and synthetic features + the floor) against a warm one (synthetic features only), cold/warm pairs interleaved.
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
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replicas import informative, mni_template, unit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIDE_2D = 64
SIDE_3D = 32
BLUR = {2: (1.0, 3.0), 3: (0.7, 2.0)}  # (mild, strong) Gaussian σ in pixels / voxels
NOISE = (0.02, 0.08)  # (mild, strong) additive Gaussian σ on [0, 1] intensities
CONDITIONS = ("holdout", "blur_mild", "blur_strong", "noise_mild", "noise_strong", "unrelated")


# =============================================================================================== image sets


def fit(image: np.ndarray, side: int) -> np.ndarray:
    from audit.data.imageio import fit_to_shape

    return fit_to_shape(unit(image), (side,) * image.ndim)


def radiograph_tiles(tile: int = 128) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(reference, held-out) tiles of the two CR chest radiographs; a tile is held out on every third diagonal of
    the tile grid, so held-out and reference tiles never overlap and come from the same regions."""
    import pydicom.data

    from audit.data.imageio import read_image, to_unit_range

    reference, held_out = [], []
    for name in ("RG1_UNCI.dcm", "RG3_UNCI.dcm"):
        image = to_unit_range(read_image(pydicom.data.get_testdata_file(name)))
        for i, r in enumerate(range(0, image.shape[0] - tile + 1, tile)):
            for j, c in enumerate(range(0, image.shape[1] - tile + 1, tile)):
                crop = unit(image[r:r + tile, c:c + tile])
                if informative(crop):
                    (held_out if (i + j) % 3 == 0 else reference).append(fit(crop, SIDE_2D))
    return reference, held_out


def mni_slice_sets(volume: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every 2nd slice along each axis with at least a quarter of brain; every third of them held out."""
    reference, held_out = [], []
    for axis in range(3):
        kept = [i for i in range(0, volume.shape[axis], 2) if np.mean(np.take(volume, i, axis=axis) > 0.05) > 0.25]
        for position, i in enumerate(kept):
            (held_out if position % 3 == 1 else reference).append(fit(np.take(volume, i, axis=axis), SIDE_2D))
    return reference, held_out


def mni_cubes(volume: np.ndarray, count: int, side: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Random side³ cubes of the MNI template (mostly brain), resized to 32³: unrelated to the phantom heads."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        corner = [int(rng.integers(0, s - side)) for s in volume.shape]
        cube = volume[tuple(slice(c, c + side) for c in corner)]
        if np.mean(cube > 0.05) > 0.5:
            out.append(fit(cube, SIDE_3D))
    return out


def dataset_split(name: str, root: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset

    dataset = open_dataset(load_data_config(name, root=root))
    return list(dataset.subset("train").stack()), list(dataset.subset("test").stack())


def corrupt(images: list[np.ndarray], condition: str, seed: int) -> list[np.ndarray]:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    ndim = images[0].ndim
    if condition.startswith("blur"):
        sigma = BLUR[ndim][condition.endswith("strong")]
        return [gaussian_filter(im, sigma, mode="nearest").astype(np.float32) for im in images]
    sigma = NOISE[condition.endswith("strong")]
    return [np.clip(im + rng.normal(0, sigma, im.shape), 0, 1).astype(np.float32) for im in images]


def image_sets(name: str) -> dict[str, list[np.ndarray]]:
    """reference + the six conditions of one image set (held-out, four corruptions, unrelated)."""
    if name == "radiographs":
        reference, held_out = radiograph_tiles()
        unrelated_pool = sum(mni_slice_sets(mni_template()), [])
    elif name == "mni":
        reference, held_out = mni_slice_sets(mni_template())
        unrelated_pool = sum(radiograph_tiles(), [])
    elif name == "mammo80":
        reference, held_out = dataset_split("phantom-mammo", "/work/data/mammo80")
        unrelated_pool = sum(mni_slice_sets(mni_template()), [])
    elif name == "brain40":
        reference, held_out = dataset_split("phantom-brain3d", "/work/data/brain40")
        unrelated_pool = mni_cubes(mni_template(), len(held_out))
    else:
        raise SystemExit(f"unknown image set {name}")
    rng = np.random.default_rng(0)
    unrelated = [unrelated_pool[i] for i in rng.choice(len(unrelated_pool), len(held_out), replace=False)]
    sets = {"reference": reference, "holdout": held_out, "unrelated": unrelated}
    for k, condition in enumerate(c for c in CONDITIONS if c.startswith(("blur", "noise"))):
        sets[condition] = corrupt(held_out, condition, seed=100 + k)
    return sets


def write_folder(images: list[np.ndarray], folder: Path):
    from audit.data.imageio import image_file_name, write_image_file
    from audit.data.readers.folder import open_folder

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = folder / image_file_name(f"{i:05d}", image.ndim)
        if not path.exists():
            write_image_file(image, path)
    return open_folder(folder, shape=images[0].shape)


# =============================================================================================== extractors


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with Kaiming-normal convolutions (PyTorch's default init shrinks activations by
    ~1e-8 over the network, which makes every FID ~0): a pipeline check, not Inception FID."""
    from audit.extractors.inception import build_inception_network

    if path.exists():
        return path
    torch.manual_seed(0)
    network = build_inception_network()
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in network.state_dict().items()}, path)
    return path


def make_extractor(name: str, work: Path, runtime):
    from audit.extractors import build_extractor

    if name == "inception-random":
        return build_extractor("inception", weights=str(random_inception_weights(work / "inception-random.pth")),
                               runtime=runtime)
    return build_extractor(name, runtime=runtime)


# =============================================================================================== parts


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": list(os.getloadavg())}


def ordering_checks(row: dict[str, dict]) -> dict[str, bool]:
    """The expected orderings of one (image set, extractor) row."""
    v = {c: {m: row[c][m]["value"] for m in row[c]} for c in row}
    checks = {}
    for metric in ("fid", "kid"):
        for family in ("blur", "noise"):
            chain = [v["holdout"][metric], v[f"{family}_mild"][metric], v[f"{family}_strong"][metric],
                     v["unrelated"][metric]]
            checks[f"{metric}:{family}"] = all(a < b for a, b in zip(chain, chain[1:]))
    checks["recall:blur"] = v["blur_strong"]["recall"] < v["holdout"]["recall"]
    checks["precision:noise"] = v["noise_strong"]["precision"] < v["holdout"]["precision"]
    return checks


def run_ordering(args) -> dict:
    from audit.artifacts import ArtifactCache
    from audit.extractors.feature_sets import extract_feature_set
    from audit.metrics.fidelity import Standardiser
    from audit.metrics.fidelity_stage import FidelityParams, score_feature_sets
    from audit.registry import Runtime

    work = Path(args.work)
    cache = ArtifactCache(work / "cache")
    runtime = Runtime(batch_size=32, progress=False)
    params = FidelityParams(n_boot=args.n_boot)
    results: dict = {"rows": {}, "checks": {}, "sizes": {}}
    for set_name in args.datasets.split(","):
        t0 = time.perf_counter()
        sets = image_sets(set_name)
        datasets = {k: write_folder(v, work / "sets" / set_name / k) for k, v in sets.items()}
        results["sizes"][set_name] = {k: len(v) for k, v in sets.items()}
        print(f"[{set_name}] sizes {results['sizes'][set_name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for extractor_name in args.extractors.split(","):
            t1 = time.perf_counter()
            extractor = make_extractor(extractor_name, work, runtime)
            extractor.prepare(datasets["reference"], cache)
            features = {k: extract_feature_set(extractor, d, runtime.batch_size).features for k, d in datasets.items()}
            standardise = (Standardiser.fit(features["reference"]) if extractor.standardise_against_reference
                           else (lambda x: np.asarray(x, np.float64)))
            reference = standardise(features["reference"])
            row = {c: score_feature_sets(reference, standardise(features[c]), params) for c in CONDITIONS}
            key = f"{set_name}/{extractor_name}"
            results["rows"][key] = {c: {m: {f: row[c][m][f] for f in ("value", "ci_low", "ci_high", "n")}
                                        for m in ("fid", "kid", "precision", "recall", "density", "coverage")}
                                    for c in CONDITIONS}
            results["checks"][key] = ordering_checks(results["rows"][key])
            print(f"[{key}] {results['checks'][key]} ({time.perf_counter() - t1:.0f} s)", flush=True)
    return results


def ordering_markdown(results: dict) -> str:
    lines = []
    for key, row in results["rows"].items():
        label = key + (" — RANDOM WEIGHTS: pipeline check only" if key.endswith("inception-random") else "")
        lines += [f"#### {label}", "", "| set | FID | KID | precision | recall | density | coverage |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for condition in CONDITIONS:
            cells = []
            for metric in ("fid", "kid", "precision", "recall", "density", "coverage"):
                e = row[condition][metric]
                cells.append(f"{e['value']:.3g} ({e['ci_low']:.3g}–{e['ci_high']:.3g})")
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
        checks = results["checks"][key]
        lines += ["", "Orderings: " + ", ".join(f"{k} {'ok' if ok else 'NO'}" for k, ok in checks.items()), ""]
    return "\n".join(lines)


class FeatureModule(nn.Module):
    """An extractor as the `feature` module torchmetrics calls on each batch of float images (B, *S)."""

    def __init__(self, extractor, dim: int):
        super().__init__()
        self.extractor = extractor
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.extractor.extract(x.numpy()))


class InceptionOnUint8(nn.Module):
    """torchmetrics' view of our Inception: uint8 (B, 3, H, W) in, pool3 features out — the same network."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (features,) = self.network(x)
        return features


class FeaturesAsInput(nn.Module):
    """A torchmetrics `feature` module whose inputs are already features: both tools see one feature set."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def run_equality(args) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from audit.extractors.feature_sets import extract_feature_set
    from audit.metrics.fidelity import Standardiser, frechet_distance_features, kid_estimate, kid_subsets
    from audit.registry import Runtime

    work = Path(args.work)
    runtime = Runtime(batch_size=32)
    train, test = dataset_split("phantom-mammo", "/work/data/mammo80")
    datasets = {"train": write_folder(train, work / "sets" / "mammo80" / "reference"),
                "test": write_folder(test, work / "sets" / "mammo80" / "holdout")}
    out: dict = {}

    def torchmetrics_fid(real: np.ndarray, fake: np.ndarray, module=None) -> float:
        metric = FrechetInceptionDistance(feature=module or FeaturesAsInput(real.shape[1]))
        metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
        metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
        return float(metric.compute())

    # radiomics features (z-scored on train), and inception-random features
    for name in ("radiomics", "inception-random"):
        extractor = make_extractor(name, work, runtime)
        feats = {k: extract_feature_set(extractor, d, 32).features for k, d in datasets.items()}
        if extractor.standardise_against_reference:
            z = Standardiser.fit(feats["train"])
            feats = {k: z(v) for k, v in feats.items()}
        ours = frechet_distance_features(feats["train"], feats["test"])
        theirs = torchmetrics_fid(feats["train"], feats["test"])
        entry = {"d": int(feats["train"].shape[1]), "n": [len(feats["train"]), len(feats["test"])],
                 "fid_ours": ours, "fid_torchmetrics": theirs, "fid_rel_error": abs(ours - theirs) / abs(theirs)}
        # KID with every subset = the whole set (64 vs 64): no random subsets to disagree on
        real64 = feats["train"][:64]
        metric = KernelInceptionDistance(feature=FeaturesAsInput(real64.shape[1]), subsets=1, subset_size=64)
        metric.update(torch.as_tensor(real64, dtype=torch.float64), real=True)
        metric.update(torch.as_tensor(feats["test"], dtype=torch.float64), real=False)
        kid_theirs = float(metric.compute()[0])
        kid_ours = kid_subsets(real64, feats["test"], subsets=1, subset_size=64).mean
        entry.update(kid_ours=kid_ours, kid_torchmetrics=kid_theirs, kid_rel_error=abs(kid_ours - kid_theirs) /
                     abs(kid_theirs))
        # KID on 20 images per side
        small = kid_estimate(feats["train"][:20], feats["test"][:20], subsets=100, n_boot=200)
        metric = KernelInceptionDistance(feature=FeaturesAsInput(real64.shape[1]))
        metric.update(torch.as_tensor(feats["train"][:20]), real=True)
        metric.update(torch.as_tensor(feats["test"][:20]), real=False)
        try:
            metric.compute()
            default_error = None
        except ValueError as err:
            default_error = str(err)
        entry["kid_20_per_side"] = {**small.estimate.to_dict(), "std_over_subsets": small.std_over_subsets,
                                    "subset_size": small.subset_size, "torchmetrics_default_error": default_error}
        if name == "inception-random":  # end to end: torchmetrics calls the same network on the same uint8 images
            metric = FrechetInceptionDistance(feature=InceptionOnUint8(extractor.network))
            for key, real in (("train", True), ("test", False)):
                for images, _ in datasets[key].iter_images(32):
                    metric.update(extractor.to_uint8_rgb(images), real=real)
            entry["fid_torchmetrics_end_to_end"] = float(metric.compute())
            entry["fid_end_to_end_rel_error"] = abs(ours - entry["fid_torchmetrics_end_to_end"]) / abs(
                entry["fid_torchmetrics_end_to_end"])
        out[name] = entry
        print(name, json.dumps(entry, indent=1, default=float), flush=True)
    return out


def run_speed(args) -> dict:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from audit.artifacts import ArtifactCache
    from audit.extractors.feature_sets import extract_feature_set
    from audit.metrics.fidelity_stage import FidelityStage
    from audit.registry import Runtime
    from audit.stages import StageContext, StageInputs

    work = Path(args.work)
    runtime = Runtime(batch_size=32)
    train, test = dataset_split("phantom-mammo", "/work/data/mammo80")
    dataset = write_folder(train, work / "sets" / "mammo80" / "reference")
    holdout = write_folder(test, work / "sets" / "mammo80" / "holdout")
    synthetic = write_folder(corrupt(test, "noise_mild", 7), work / "sets" / "mammo80" / "noise_mild_speed")
    out: dict = {"throughput": {}, "cache": {}}
    parts = args.speed_parts.split(",")
    for name in ("radiomics", "inception-random") if "throughput" in parts else ():
        extractor = make_extractor(name, work, runtime)
        images = dataset if name == "radiomics" else dataset.subset(ids=[r.id for r in dataset.records[:96]])
        dim = extract_feature_set(extractor, images.subset(ids=[images.records[0].id]), 1).features.shape[1]
        if name == "inception-random":
            module = InceptionOnUint8(extractor.network)

            def theirs_batch(batch):
                return extractor.to_uint8_rgb(batch)
        else:
            module = FeatureModule(extractor, dim)

            def theirs_batch(batch):
                return torch.from_numpy(batch)
        def ours() -> float:
            t0 = time.perf_counter()
            extract_feature_set(extractor, images, runtime.batch_size)
            return time.perf_counter() - t0

        def theirs() -> float:
            metric = FrechetInceptionDistance(feature=module)
            t0 = time.perf_counter()
            for batch, _ in images.iter_images(runtime.batch_size):
                metric.update(theirs_batch(batch), real=True)
            return time.perf_counter() - t0

        warm_up = images.subset(ids=[r.id for r in images.records[:runtime.batch_size]])
        extract_feature_set(extractor, warm_up, runtime.batch_size)  # first calls (allocator, BLAS) untimed
        ours_times, theirs_times = [], []
        for repeat in range(args.repeats):  # the order alternates, so neither always runs first
            if repeat % 2 == 0:
                ours_times.append(ours())
                theirs_times.append(theirs())
            else:
                theirs_times.append(theirs())
                ours_times.append(ours())
        n = len(images)
        out["throughput"][name] = {
            "images": n, "ours_images_per_s": [n / t for t in ours_times],
            "torchmetrics_images_per_s": [n / t for t in theirs_times],
            "ratio_median": float(np.median(np.array(theirs_times) / np.array(ours_times)))}
        print(name, out["throughput"][name], flush=True)

    for name in ("radiomics", "domain") if "cache" in parts else ():
        cold, warm = [], []
        for repeat in range(args.repeats):
            cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{name}-", dir=work))
            for label, times in (("cold", cold), ("warm", warm)):
                stage = FidelityStage(FidelityStage.Params(extractor=name, pca_plot=False), runtime)
                cache = ArtifactCache(cache_dir)
                inputs = StageInputs(None, dataset, holdout, synthetic)
                t0 = time.perf_counter()
                stage.run(inputs, StageContext(work / f"stage-{name}-{label}-{repeat}", runtime, cache))
                times.append(time.perf_counter() - t0)
                if label == "warm":
                    assert cache.builds == 0, "the warm run rebuilt a cached artefact"
        out["cache"][name] = {"cold_seconds": cold, "warm_seconds": warm,
                              "speed_up_median": float(np.median(np.array(cold) / np.array(warm)))}
        print(name, out["cache"][name], flush=True)
    return out


def speed_markdown(results: dict) -> str:
    lines = ["| extractor | images | ours (images/s) | torchmetrics update loop (images/s) | ours / theirs (median) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in results["throughput"].items():
        lines.append(f"| {name} | {r['images']} | {', '.join(f'{v:.1f}' for v in r['ours_images_per_s'])} | "
                     f"{', '.join(f'{v:.1f}' for v in r['torchmetrics_images_per_s'])} | {r['ratio_median']:.2f}× |")
    lines += ["", "| extractor | cold run (s) | warm run (s) | speed-up (median) |", "| --- | --- | --- | --- |"]
    for name, r in results["cache"].items():
        lines.append(f"| {name} | {', '.join(f'{v:.1f}' for v in r['cold_seconds'])} | "
                     f"{', '.join(f'{v:.1f}' for v in r['warm_seconds'])} | {r['speed_up_median']:.1f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("ordering", "equality", "speed"))
    parser.add_argument("--datasets", default="radiographs,mni,mammo80,brain40")
    parser.add_argument("--extractors", default="radiomics,domain,inception-random")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-parts", default="throughput,cache", help="speed: throughput and/or cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=os.environ.get("BENCH_FIDELITY_WORK", "/tmp/bench_fidelity"))
    parser.add_argument("--out", default=None,
                        help="results JSON (default benchmarks/results/bench_fidelity_<part>.json)")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    started = time.perf_counter()
    info = {"command": " ".join(["benchmarks/bench_fidelity.py", *sys.argv[1:]]),
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "machine": machine_info()}
    if args.part == "ordering":
        results = run_ordering(args)
        report = ordering_markdown(results)
    elif args.part == "equality":
        results = run_equality(args)
        report = "```json\n" + json.dumps(results, indent=1, default=float) + "\n```"
    else:
        results = run_speed(args)
        report = speed_markdown(results)
    results = {**info, **results, "seconds_total": time.perf_counter() - started}
    out = Path(args.out) if args.out else RESULTS / f"bench_fidelity_{args.part}.json"
    from bench_replicas import write_results

    write_results(results, report, out)


if __name__ == "__main__":
    main()
