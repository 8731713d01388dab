"""The VinDr-Mammo reader on a hand-made tree in the real layout."""

import csv
import os

import numpy as np
import pytest

import audit.data.readers.vindr as vindr
from audit.config import load_data_config
from audit.data.dataset import open_dataset
from audit.errors import AuditInputError
from tests.dicom_factory import write_vindr_tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "vindr"
    rows = write_vindr_tree(root, n_studies=3, for_processing={5})
    return root, rows


def open_tree(root, shape=(64, 48), **pre):
    overrides = {"preprocess": {"shape": list(shape), **pre}}
    return open_dataset(load_data_config("vindr", root=root, overrides=overrides))


def test_scan_reads_labels_splits_and_boxes(tree):
    root, rows = tree
    ds = open_tree(root)
    assert len(ds) == 11  # 12 listed, one FOR PROCESSING excluded
    assert [s.kind for s in ds.skipped] == ["excluded"] and "FOR PROCESSING" in ds.skipped[0].reason
    by_id = {r.id: r for r in ds.records}
    first = by_id[rows[0]["image_id"]]
    assert first.patient_id == rows[0]["study_id"] and first.split == "train"
    assert first.labels.birads == 4 and first.labels.density == "A" and first.labels.findings == ("Mass",)
    assert first.boxes[0].xmin == 24 and first.boxes[0].ymax == 66 and first.boxes[0].birads == 4
    assert {r.split for r in ds.records} == {"train", "test"}
    assert sum(r.split == "test" for r in ds.records) == 4
    assert all(not r.boxes for r in ds.records if r.id != rows[0]["image_id"] and r.id != rows[1]["image_id"])


def test_decoded_images_are_unit_range_flipped_and_boxes_follow(tree):
    root, rows = tree
    ds = open_tree(root)
    left_bias = []
    for sample in ds:
        img = sample.image
        assert img.shape == (64, 48) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        h, w = img.shape
        left_bias.append(img[:, : w // 2].mean() - img[:, w // 2:].mean())
    # every breast, left or right, faces the same way after flipping (chest wall on the left here)
    assert all(b > 0.02 for b in left_bias)
    mass = ds[[r.id for r in ds.records].index(rows[0]["image_id"])]
    (xmin, ymin, xmax, ymax), = mass.boxes
    box = mass.image[int(ymin):int(np.ceil(ymax)), int(xmin):int(np.ceil(xmax))]
    breast = mass.image[mass.image > 0.05]
    assert box.mean() > breast.mean() + 0.1  # the box sits over the planted lesion


def test_cache_serves_second_pass_and_misses_after_file_change(tree, monkeypatch):
    root, _ = tree
    ds = open_tree(root)
    first = [ds.load(r)[0] for r in ds.records]

    def no_decode(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(vindr, "read_dicom_display", no_decode)
    ds2 = open_tree(root)
    again = [ds2.load(r)[0] for r in ds2.records]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and ds2.cache.hits == len(ds2)
    touched = ds2.records[0].path
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        open_tree(root).load(ds2.records[0])


def test_changing_preprocessing_misses_the_cache(tree):
    root, _ = tree
    a = open_tree(root, shape=(64, 48))
    b = open_tree(root, shape=(32, 24))
    assert a.cache.folder != b.cache.folder
    assert b.load(b.records[0])[0].shape == (32, 24)


def test_missing_file_is_skipped_with_reason(tree):
    root, rows = tree
    victim = root / "images" / rows[2]["study_id"] / f"{rows[2]['image_id']}.dicom"
    victim.unlink()
    ds = open_tree(root)
    assert len(ds) == 10
    assert any(s.path == str(victim) and "missing" in s.reason for s in ds.skipped)


def test_missing_column_names_file_and_column(tree):
    root, _ = tree
    path = root / "breast-level_annotations.csv"
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[c for c in rows[0] if c != "breast_density"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "breast_density"} for r in rows)
    with pytest.raises(AuditInputError, match="breast-level_annotations.csv: missing column\\(s\\): breast_density"):
        open_tree(root)


def test_3d_shape_under_the_2d_reader_is_an_error(tree):
    root, _ = tree
    with pytest.raises(AuditInputError, match="2D"):
        open_tree(root, shape=(16, 16, 16))


def test_unparseable_findings_name_the_file(tree):
    root, _ = tree
    path = root / "finding_annotations.csv"
    text = path.read_text().replace("['Mass']", "['Mass'", 1)
    path.write_text(text)
    with pytest.raises(AuditInputError, match="finding_annotations.csv: finding_categories"):
        open_tree(root)
