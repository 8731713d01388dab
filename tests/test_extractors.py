"""Fidelity feature extractors (audit/extractors): texture maths against scikit-image and brute force, the
registry's errors, Inception from a local weights file (random weights made here: nothing is downloaded), 2.5D
planes, batch-size independence and the real-feature cache."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage.feature import graycomatrix

from audit.artifacts import ArtifactCache
from audit.checkpoints import file_sha256
from audit.data.imageio import write_image_file
from audit.data.readers.folder import open_folder
from audit.errors import AuditInputError
from audit.extractors import build_extractor, parse_extractor_spec
from audit.extractors.base import plane_positions, plane_slices
from audit.extractors.feature_sets import cached_feature_set, extract_feature_set
from audit.extractors.radiomics import RadiomicsParams, feature_names, radiomic_features
from audit.extractors.texture import glcm_2d_angles, glcm_nd, quantise, run_lengths, unique_directions
from audit.registry import Runtime
from tests.image_factory import structured_images
from tests.test_fidelity import one_torch_thread  # noqa: F401  (autouse: one torch thread in this module too)


# ------------------------------------------------------------------------------------------------ texture maths


def brute_force_runs(q: np.ndarray, direction) -> list[tuple[int, int]]:
    runs = []
    inside = lambda p: all(0 <= c < s for c, s in zip(p, q.shape))  # noqa: E731
    for p in itertools.product(*map(range, q.shape)):
        previous = tuple(a - b for a, b in zip(p, direction))
        if inside(previous) and q[previous] == q[p]:
            continue  # not the first voxel of its run
        length, current = 1, p
        while inside(nxt := tuple(a + b for a, b in zip(current, direction))) and q[nxt] == q[p]:
            length, current = length + 1, nxt
        runs.append((int(q[p]), length))
    return sorted(runs)


@pytest.mark.parametrize("shape", [(6, 9), (4, 5, 6)])
def test_run_lengths_equal_brute_force_in_every_direction(shape):
    q = np.random.default_rng(len(shape)).integers(0, 3, shape)
    assert len(unique_directions(len(shape))) == {2: 4, 3: 13}[len(shape)]
    for direction in unique_directions(len(shape)):
        levels, lengths = run_lengths(q, direction)
        assert sorted(zip(levels.tolist(), lengths.tolist())) == brute_force_runs(q, direction)


@pytest.mark.parametrize("distance", [1, 2])
def test_numpy_glcm_equals_scikit_image_in_2d(distance):
    image = np.random.default_rng(0).integers(0, 8, (21, 17))
    theirs = graycomatrix(image.astype(np.uint8), [distance], glcm_2d_angles(), levels=8, symmetric=True, normed=True)
    offsets = [(round(np.sin(a) * distance), round(np.cos(a) * distance)) for a in glcm_2d_angles()]
    np.testing.assert_allclose(glcm_nd(image, offsets, 8), theirs, atol=1e-15)


def test_quantise_uses_fixed_bins():
    np.testing.assert_array_equal(quantise(np.array([-1.0, 0.0, 0.49, 0.5, 1.0, 2.0]), 0, 1, 4), [0, 0, 1, 2, 3, 3])


def test_radiomic_features_are_deterministic_and_named_in_2d_and_3d():
    params = RadiomicsParams()
    image = structured_images(1, (32, 32), seed=0)[0]
    volume = structured_images(1, (16, 16, 16), seed=0)[0]
    f2, f3 = radiomic_features(image, params), radiomic_features(volume, params)
    assert f2.shape == f3.shape == (len(feature_names(params)),) == (4 * 33,)
    assert np.isfinite(f2).all() and np.isfinite(f3).all()
    np.testing.assert_array_equal(f2, radiomic_features(image.copy(), params))
    # the texture features see noise: GLCM contrast of the original image rises
    noisy = np.clip(image + np.random.default_rng(1).normal(0, 0.1, image.shape), 0, 1)
    contrast = feature_names(params).index("original/glcm/contrast/d1")
    assert radiomic_features(noisy, params)[contrast] > f2[contrast] + 5  # measured: 13.2 → 23.5


def test_plane_slices_take_the_central_planes():
    volumes = np.arange(2 * 4 * 6 * 8, dtype=np.float32).reshape(2, 4, 6, 8)
    assert plane_positions(4, 1) == [2] and plane_positions(8, 3) == [3, 4, 5]
    np.testing.assert_array_equal(plane_slices(volumes, 0, 1), volumes[:, 2])
    np.testing.assert_array_equal(plane_slices(volumes, 1, 1), volumes[:, :, 3])
    np.testing.assert_array_equal(plane_slices(volumes, 2, 2)[1], volumes[0, :, :, 4])


def test_radiomics_reads_volumes_natively_or_as_planes():
    volumes = structured_images(2, (16, 16, 16), seed=3)
    native = build_extractor("radiomics").extract(volumes)
    planes = build_extractor("radiomics", options={"volume": "planes"}).extract(volumes)
    assert native.shape == (2, 132) and planes.shape == (2, 3 * 132)
    one_plane = radiomic_features(volumes[1][8], RadiomicsParams())  # axial centre slice of the second volume
    np.testing.assert_allclose(planes[1, :132], one_plane, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("spec,weights,options,message", [
    ("incept", None, None, "unknown extractor 'incept'"),
    ("timm", None, None, "write 'timm:<model name>'"),
    ("radiomics:x", None, None, "write 'radiomics'"),
    ("radiomics", "w.pth", None, "extractor 'radiomics' takes no weights"),
    ("radiomics", None, {"levels": 1}, "levels must be between 2 and 256"),
    ("radiomics", None, {"bins": 8}, "unknown parameter 'bins'"),
])
def test_bad_extractor_choices_are_one_line_errors(spec, weights, options, message):
    with pytest.raises(AuditInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_extractor(spec, weights, options)


def test_timm_spec_carries_its_model():
    assert parse_extractor_spec("timm:resnet18", "w.safetensors") == ("timm", {"model": "resnet18",
                                                                               "weights": "w.safetensors"})


# ------------------------------------------------------------------------------------------------ inception


class NotATensor:
    """An arbitrary object in a weights file: `torch.load(weights_only=True)` must refuse to build it."""


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved as torch-fidelity ships them (a .pth state dict)
    and as safetensors: the extractor must load both through its own path."""
    from audit.extractors.inception import build_inception_network

    folder = tmp_path_factory.mktemp("inception")
    torch.manual_seed(0)
    network = build_inception_network()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    torch.save(state, folder / "weights.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "weights.safetensors"))
    return folder, network


@pytest.fixture(scope="module")
def inception(inception_weights):
    folder, _ = inception_weights
    return build_extractor("inception", weights=str(folder / "weights.pth"))


def test_inception_loads_local_weights_and_names_their_hash(inception_weights, inception):
    folder, network = inception_weights
    assert inception.identity()["weights_sha256"] == file_sha256(folder / "weights.pth")
    assert "weights" not in inception.identity()["params"]  # the hash names the weights, not their path
    images = structured_images(2, (40, 48), seed=4)
    features = inception.extract(images)
    assert features.shape == (2, 2048)
    with torch.inference_mode():
        (expected,) = network(inception.to_uint8_rgb(images))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-12)
    # the safetensors conversion loads the same tensors
    from audit.extractors.inception import read_state_dict

    converted = read_state_dict(folder / "weights.safetensors")
    for key, tensor in inception.network.state_dict().items():
        torch.testing.assert_close(converted[key], tensor, rtol=0, atol=0)


def test_a_missing_inception_weights_file_says_which_file_and_where_to_put_it(tmp_path):
    with pytest.raises(AuditInputError) as err:
        build_extractor("inception", weights=str(tmp_path / "nope.pth"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nope.pth") in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "put it at this path" in message
    with pytest.raises(AuditInputError, match="default place") as err:
        build_extractor("inception", runtime=Runtime(cache_dir=tmp_path))
    assert str(tmp_path / "weights" / "weights-inception-2015-12-05-6726825d.pth") in str(err.value)


def test_inception_weights_of_the_wrong_shape_or_kind_are_refused(tmp_path):
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "small.safetensors"))
    with pytest.raises(AuditInputError, match="weights do not fit the model"):
        build_extractor("inception", weights=str(tmp_path / "small.safetensors"))

    torch.save({"fc.weight": NotATensor()}, tmp_path / "object.pth")
    with pytest.raises(AuditInputError, match="not a state dict of tensors"):
        build_extractor("inception", weights=str(tmp_path / "object.pth"))


# ------------------------------------------------------------------------------------------------ streaming and cache


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(structured_images(7, (32, 32), seed=5)):
        write_image_file(image, folder / f"{i:02d}.png")
    return folder


def test_features_do_not_depend_on_the_batch_size(image_folder, inception):
    dataset = open_folder(image_folder).subset(ids=[f"{i:02d}.png" for i in range(4)])
    for extractor in (build_extractor("radiomics"), inception):
        one = extract_feature_set(extractor, dataset, batch_size=1)
        many = extract_feature_set(extractor, dataset, batch_size=3)
        np.testing.assert_allclose(one.features, many.features, rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(one.cov, np.cov(one.features.astype(np.float64).T), rtol=1e-6, atol=1e-12)
        assert one.ids == many.ids == [r.id for r in dataset.records]


def test_real_features_are_cached_and_missed_when_the_extractor_or_the_data_change(image_folder, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    dataset = open_folder(image_folder)
    radiomics = build_extractor("radiomics")
    first = cached_feature_set(radiomics, dataset, "train", cache)
    assert (cache.builds, cache.hits) == (1, 0)
    second = cached_feature_set(build_extractor("radiomics"), open_folder(image_folder), "train", cache)
    assert (cache.builds, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.cov, second.cov)
    cached_feature_set(build_extractor("radiomics", options={"levels": 16}), dataset, "train", cache)
    assert cache.builds == 2  # another extractor configuration
    cached_feature_set(radiomics, dataset, "holdout", cache)
    assert cache.builds == 3  # another split
    write_image_file(structured_images(1, (32, 32), seed=99)[0], image_folder / "07.png")
    cached_feature_set(radiomics, open_folder(image_folder), "train", cache)
    assert (cache.builds, cache.hits) == (4, 1)  # other data


def test_domain_extractor_trains_once_per_data_and_config(image_folder, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    dataset = open_folder(image_folder)
    extractor = build_extractor("domain", options={"epochs": 1})
    with pytest.raises(RuntimeError, match="before prepare"):
        extractor.extract(np.zeros((1, 32, 32), np.float32))
    extractor.prepare(dataset, cache)
    features = extractor.extract(dataset.stack())
    assert features.shape == (7, 64) and cache.builds == 1
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    again = build_extractor("domain", options={"epochs": 1})
    again.prepare(open_folder(image_folder), cache)
    assert (cache.builds, cache.hits) == (1, 1)
    assert again.identity() == extractor.identity() and len(again.identity()["weights_sha256"]) == 64
    np.testing.assert_allclose(again.extract(dataset.stack()), features, atol=1e-6)
    # a saved encoder folder given as weights
    from_folder = build_extractor("domain", weights=str(extractor.encoder_folder))
    assert from_folder.identity()["weights_sha256"] == extractor.identity()["weights_sha256"]


def test_timm_backbone_from_local_weights_reads_images_and_volumes_as_planes(tmp_path):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "resnet10t.safetensors"))
    extractor = build_extractor("timm:resnet10t", weights=str(tmp_path / "resnet10t.safetensors"))
    assert extractor.identity()["name"] == "timm:resnet10t"
    assert extractor.identity()["weights_sha256"] == file_sha256(tmp_path / "resnet10t.safetensors")
    assert extractor.extract(structured_images(2, (32, 32), seed=1)).shape == (2, 512)
    assert extractor.extract(structured_images(2, (16, 16, 16), seed=1)).shape == (2, 3 * 512)
    with pytest.raises(AuditInputError, match="needs --weights"):
        build_extractor("timm:resnet10t")
