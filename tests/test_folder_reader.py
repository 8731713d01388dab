"""The folder reader: PNG 8/16-bit, TIFF, NPY, NIfTI, DICOM, with and without a manifest."""

import numpy as np
import nibabel as nib
import pytest
import tifffile
from PIL import Image

from audit.data.readers.folder import open_folder
from audit.errors import AuditInputError
from tests.dicom_factory import breast_image, write_dicom


def ramp(h=20, w=30):
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


def test_every_2d_format_reads_to_the_same_unit_image(tmp_path):
    img = ramp()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / "a8.png")
    Image.fromarray((img * 65535).round().astype(np.uint16)).save(tmp_path / "b16.png")
    tifffile.imwrite(tmp_path / "c.tif", (img * 65535).round().astype(np.uint16))
    np.save(tmp_path / "d.npy", img)
    ds = open_folder(tmp_path)
    assert [r.id for r in ds.records] == ["a8.png", "b16.png", "c.tif", "d.npy"]
    for sample in ds:
        np.testing.assert_allclose(sample.image, img, atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(ds[1].image, img, atol=1 / 65535 + 1e-6)  # 16-bit keeps its precision


def test_differing_sizes_are_resampled_to_the_first_shape(tmp_path):
    np.save(tmp_path / "a.npy", ramp(20, 30))
    np.save(tmp_path / "b.npy", ramp(40, 60))
    ds = open_folder(tmp_path)
    assert ds.shape == (20, 30) and ds[1].image.shape == (20, 30)
    np.testing.assert_allclose(ds[1].image, ds[0].image, atol=0.02)


def test_manifest_gives_labels_and_source_ids(tmp_path):
    np.save(tmp_path / "s0.npy", ramp())
    np.save(tmp_path / "s1.npy", ramp()[::-1])
    (tmp_path / "manifest.csv").write_text(
        "file,source_id,birads,density,view,laterality,findings,seed\n"
        "s0.npy,img-7,4,C,CC,L,Mass;Asymmetry,3\ns1.npy,img-9,1,A,MLO,R,,3\n")
    ds = open_folder(tmp_path)
    r = ds.records[0]
    assert r.source_id == "img-7" and r.labels.birads == 4 and r.labels.density == "C"
    assert r.labels.findings == ("Mass", "Asymmetry") and r.view == "CC" and dict(r.labels.extra)["seed"] == "3"
    assert ds.records[1].labels.findings == ()


def test_dicom_and_nifti_in_folders(tmp_path):
    d2 = tmp_path / "dicoms"
    att = breast_image()
    write_dicom(d2 / "x.dcm", att)
    ds = open_folder(d2)
    assert np.corrcoef(ds[0].image.ravel(), att.ravel())[0, 1] > 0.999
    d3 = tmp_path / "vols"
    d3.mkdir()
    vol = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d3 / "v.nii.gz")
    ds3 = open_folder(d3)
    assert ds3.shape == (8, 9, 10)
    np.testing.assert_allclose(ds3[0].image, vol, atol=1e-6)


def test_bad_folders_give_clean_errors(tmp_path):
    with pytest.raises(AuditInputError, match="no image files"):
        open_folder(tmp_path)
    np.save(tmp_path / "a.npy", ramp())
    np.save(tmp_path / "b.npy", np.zeros((4, 5, 6), np.float32))
    ds = open_folder(tmp_path)
    with pytest.raises(AuditInputError, match="b.npy: a 3D volume where the set is 2D"):
        ds.load(ds.records[1])
    (tmp_path / "c.png").write_bytes(b"not a png")
    ds = open_folder(tmp_path)
    with pytest.raises(AuditInputError, match="c.png: cannot read image"):
        ds.load(ds.records[2])
    (tmp_path / "manifest.csv").write_text("name\nx\n")
    with pytest.raises(AuditInputError, match="manifest.csv: manifest lacks the required column 'file'"):
        open_folder(tmp_path, shape=(4, 4))
