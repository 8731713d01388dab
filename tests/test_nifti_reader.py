"""The 3D NIfTI reader on nibabel's test volumes and nilearn's MNI152 template (files nobody here wrote)."""

import csv
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from audit.config import load_data_config
from audit.data.dataset import open_dataset
from audit.data.readers.nifti import percentile_scale
from audit.errors import AuditInputError


def write_manifest(root, rows):
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def open_volumes(root, shape, **pre):
    overrides = {"preprocess": {"shape": list(shape), **pre}}
    return open_dataset(load_data_config("phantom-brain3d", root=root, overrides=overrides))


def test_nibabel_las_volume_is_reoriented_to_ras(tmp_path):
    src = os.path.join(data_path, "anatomical.nii")
    img = nib.load(src)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    shutil.copy(src, tmp_path / "anat.nii")  # a copy: symlinks out of the dataset folder are refused
    write_manifest(tmp_path, [{"id": "a", "patient_id": "p", "split": "train", "path": "anat.nii", "group": "x"}])
    ds = open_volumes(tmp_path, img.shape)
    volume = ds[0].image
    raw = np.asarray(img.dataobj, dtype=np.float32)
    # RAS+ canonical = the x axis reversed for an LAS file; intensities by percentiles of the non-zero voxels
    np.testing.assert_allclose(volume, percentile_scale(raw[::-1], 1.0, 99.0), atol=1e-6)
    assert ds.records[0].labels.as_dict()["group"] == "x"


def test_mni152_loads_as_a_3d_record_and_orientation_is_canonical(tmp_path):
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    data = np.asarray(template.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, template.affine), tmp_path / "ras.nii.gz")
    # the same head stored LPS: x and y reversed in the array and in the affine
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_affine = template.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1],
                                             [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    nib.save(nib.Nifti1Image(data[::-1, ::-1].copy(), lps_affine), tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S") and np.allclose(flip @ flip, np.eye(4))
    write_manifest(tmp_path, [{"id": "ras", "patient_id": "mni", "split": "train", "path": "ras.nii.gz"},
                              {"id": "lps", "patient_id": "mni", "split": "train", "path": "lps.nii.gz"}])
    ds = open_volumes(tmp_path, (32, 32, 32))
    ras, lps = ds[0].image, ds[1].image
    assert ras.shape == (32, 32, 32) and 0 <= ras.min() and ras.max() <= 1
    np.testing.assert_allclose(ras, lps, atol=1e-6)
    # brain at the centre, air in the corners
    assert ras[12:20, 12:20, 12:20].mean() > 0.3 and ras[:3, :3, :3].max() < 0.05


def test_4d_file_and_2d_config_give_clean_errors(tmp_path):
    shutil.copy(os.path.join(data_path, "example4d.nii.gz"), tmp_path / "four.nii.gz")
    write_manifest(tmp_path, [{"id": "f", "patient_id": "p", "split": "train", "path": "four.nii.gz"}])
    ds = open_volumes(tmp_path, (16, 16, 16))
    with pytest.raises(AuditInputError, match="four.nii.gz: expected a 3D volume"):
        ds.load(ds.records[0])
    with pytest.raises(AuditInputError, match="needs a 3D shape"):
        open_volumes(tmp_path, (16, 16))


def test_manifest_problems_name_the_manifest(tmp_path):
    (tmp_path / "manifest.csv").write_text("id,split,path\na,train,x.nii\n")
    with pytest.raises(AuditInputError, match="manifest.csv: missing column\\(s\\): patient_id"):
        open_volumes(tmp_path, (8, 8, 8))
    (tmp_path / "manifest.csv").write_text("id,patient_id,split,path\na,p,train,x.nii\n")
    with pytest.raises(AuditInputError, match="no usable images"):
        open_volumes(tmp_path, (8, 8, 8))
