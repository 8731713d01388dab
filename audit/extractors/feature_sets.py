"""Feature sets of image datasets, streamed in batches and cached when they depend only on real data.

`extract_feature_set` sends the dataset's records in batches through the executor layer (`audit.parallel`: in
process by default, Ray actors with --ray-address; each worker reads its own images, memory bounded by the batch)
and keeps the feature rows (small: n × d) plus their streaming mean and covariance. `cached_feature_set` stores
both under the artefact cache, keyed by what they depend on — the dataset's fingerprint (record ids, labels,
file identities, preprocessing), the split, and the extractor's identity (name, parameters, weights hash, feature
code version) — so a second audit on the same real set reads them instead of recomputing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import AuditInputError
from audit.metrics.fidelity import StreamingMoments
from audit.parallel import LOCAL, image_loader, resolve

FEATURES_ARTEFACT = "fidelity-features"


@dataclass
class FeatureSet:
    features: np.ndarray  # (n, d) float32, rows in the dataset's record order
    ids: list[str]
    mean: np.ndarray  # (d,) float64
    cov: np.ndarray  # (d, d) float64, unbiased (n − 1); NaN when n < 2

    def __len__(self) -> int:
        return len(self.features)


class ExtractFeatures:
    """One batch of records on a worker (`audit.parallel`): read the images, extract, check they are finite."""

    def __init__(self, extractor, loader):
        self.extractor = resolve(extractor)
        self.loader = loader  # the dataset without its record list: decoder, preprocessing, cache

    def __call__(self, records) -> list[np.ndarray]:
        images = np.stack([self.loader.load(r)[0] for r in records])
        features = np.asarray(self.extractor.extract(images), np.float32)
        bad = ~np.isfinite(features).all(axis=1)
        if bad.any():
            raise AuditInputError(records[int(np.flatnonzero(bad)[0])].path,
                                  f"extractor '{self.extractor.display_name}' gives non-finite features for this "
                                  "image")
        return list(features)


def extract_feature_set(extractor, dataset, batch_size: int = 32, progress: str | None = None,
                        executor=None) -> FeatureSet:
    """Features of every image of `dataset`, in batches of `batch_size` (in process, or on the executor's workers:
    records travel, each worker reads its images; rows come back in record order, the same batches either way)."""
    from audit.progress import progress_bar

    extractor.check_ndim(dataset.ndim)
    if len(dataset) == 0:
        raise AuditInputError(None, f"dataset '{dataset.name}' has no images")
    executor = executor or LOCAL
    bar = progress_bar(total=len(dataset), desc=progress) if progress else None
    shipped_extractor = extractor if executor.in_process else extractor.source()
    rows = executor.map_batches(ExtractFeatures, dataset.records, batch_size=batch_size,
                                constructor_kwargs={"extractor": shipped_extractor, "loader": image_loader(dataset)},
                                on_group=(lambda _, r: bar.update(len(r))) if bar is not None else None)
    if bar is not None:
        bar.close()
    features = np.stack(rows).astype(np.float32, copy=False)
    moments = StreamingMoments()
    for start in range(0, len(features), batch_size):  # the batches of the streaming pass: the same sums
        moments.update(features[start:start + batch_size])
    cov = moments.cov if moments.n >= 2 else np.full((len(moments.mean),) * 2, np.nan)
    return FeatureSet(features, [r.id for r in dataset.records], moments.mean, cov)


def feature_set_key(extractor, dataset, split: str) -> dict:
    from audit.artifacts import dataset_fingerprint

    return {"data": dataset_fingerprint(dataset), "split": split, "extractor": extractor.identity(),
            "preprocess": dataset.preprocess.model_dump(mode="json")}


def save_feature_set(feature_set: FeatureSet, folder: Path) -> None:
    np.save(folder / "features.npy", feature_set.features)
    np.save(folder / "mean.npy", feature_set.mean)
    np.save(folder / "cov.npy", feature_set.cov)
    (folder / "ids.json").write_text(json.dumps(feature_set.ids))


def load_feature_set(folder: Path) -> FeatureSet:
    def array(name: str) -> np.ndarray:
        return np.load(folder / name, allow_pickle=False)

    return FeatureSet(array("features.npy"), json.loads((folder / "ids.json").read_text()), array("mean.npy"),
                      array("cov.npy"))


def cached_feature_set(extractor, dataset, split: str, cache, batch_size: int = 32,
                       progress: str | None = None, executor=None) -> FeatureSet:
    """The feature set of a real dataset, from the artefact cache when it was computed before."""
    def build(folder: Path) -> None:
        save_feature_set(extract_feature_set(extractor, dataset, batch_size, progress, executor), folder)

    return load_feature_set(cache.get_or_build(FEATURES_ARTEFACT, feature_set_key(extractor, dataset, split), build))
