"""Generators: training, sampling, checkpoints, white-box access, adapters (tiny configs, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.data.records import Box
from generators.base import Condition, image_seed, per_image_noise
from generators.conditions import LabelVocabulary, box_mask, cycle_conditions, read_conditions_csv
from generators.config import GeneratorConfig
from generators.ldm import LDM2D, LDM3D, LatentDiffusionGenerator
from generators.training import TrainingData, diffusion_loss, encode_all, index_batch, step_generator, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the test machine is shared: one thread avoids OpenMP oversubscription (several times slower otherwise);
    # module scope, so the module-scoped model fixtures train with it too
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(kind: str = "ldm2d", ae_steps: int = 20, unet_steps: int = 30, **training) -> GeneratorConfig:
    return GeneratorConfig(
        kind=kind,
        conditioning={"fields": ("birads", "density", "view", "laterality", "finding") if kind == "ldm2d"
                      else ("lesion", "age_group"), "embed_dim": 16},
        autoencoder={"channels": (8, 16), "latent_channels": 2, "norm_num_groups": 4, "steps": ae_steps,
                     "batch_size": 4, "lr": 2e-3},
        unet={"channels": (16, 32), "attention_levels": (False, True) if kind == "ldm2d" else (False, False),
              "norm_num_groups": 4, "head_channels": 16, "steps": unet_steps, "batch_size": 8, "lr": 2e-3},
        sampling={"num_inference_steps": 4, "guidance_scale": 2.0},
        training={"checkpoint_every": 1000, "log_every": 5, **training})


def mammo_conditions(n: int) -> list[Condition]:
    out = []
    for i in range(n):
        lesion = i % 3 == 2
        out.append(Condition(birads=4 if lesion else 1 + i % 2, density="ABCD"[i % 4], view=("CC", "MLO")[i % 2],
                             laterality=("L", "R")[(i // 2) % 2], findings=("Mass",) if lesion else ("No Finding",),
                             boxes=(Box(4, 5, 10, 11, "Mass"),) if lesion else (), source_id=f"rec{i:03d}"))
    return out


def brain_conditions(n: int) -> list[Condition]:
    return [Condition(extra=(("age_group", ("young", "old")[i % 2]), ("lesion", str(i % 3 == 0))),
                      source_id=f"vol{i:03d}") for i in range(n)]


def blob_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Smooth random blobs in [0, 1] — structured enough for an autoencoder to learn something quickly."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    images = []
    for _ in range(n):
        centre = rng.uniform(-0.4, 0.4, len(shape))
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        images.append(np.exp(-r2 / rng.uniform(0.1, 0.3)))
    return torch.tensor(np.stack(images), dtype=torch.float32)[:, None]


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ldm2d"
    data = TrainingData(blob_images(12, (16, 16)), mammo_conditions(12))
    train(tiny_config(), data, out, seed=0, progress=False)
    return out, data


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ldm3d"
    data = TrainingData(blob_images(6, (16, 16, 16)), brain_conditions(6))
    train(tiny_config("ldm3d", ae_steps=6, unet_steps=8), data, out, seed=0, progress=False)
    return out, data


# --- pure pieces --------------------------------------------------------------------------------------------

def test_image_seed_depends_on_seed_and_index_only():
    assert image_seed(3, 5) == image_seed(3, 5)
    assert len({image_seed(3, i) for i in range(100)} | {image_seed(4, i) for i in range(100)}) == 200
    noise = per_image_noise((2, 4, 4), seed=1, indices=range(5))
    assert torch.equal(per_image_noise((2, 4, 4), seed=1, indices=range(2, 4)), noise[2:4])


def test_vocabulary_maps_unknown_values_to_the_null_index():
    conds = mammo_conditions(6)
    vocab = LabelVocabulary.build(conds, ("birads", "density", "finding"))
    assert vocab.values[0] == ("1", "2", "4") and vocab.sizes == (4, 5, 3)
    idx = vocab.indices([conds[2], Condition(birads=5, density="B"), Condition()])
    # BI-RADS 5 was never seen: index 0 (unknown); labelled but without findings = "No Finding"
    assert idx.tolist() == [[3, 3, 1], [0, 2, 2], [0, 0, 0]]
    assert LabelVocabulary.from_json(vocab.to_json()) == vocab


def test_box_mask_marks_the_box_at_latent_resolution():
    mask = box_mask([Condition(boxes=(Box(0, 0, 8, 4),)), Condition()], (16, 16), (4, 4))
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].tolist()[0] == [1.0, 1.0, 0.0, 0.0] and mask[0, 0, 1:].sum() == 0 and mask[1].sum() == 0


def test_default_conditions_cover_the_training_set_before_repeating():
    pool = mammo_conditions(7)
    first = cycle_conditions(pool, 7, seed=2)
    assert sorted(c.source_id for c in first) == sorted(c.source_id for c in pool)
    assert cycle_conditions(pool, 10, seed=2)[3:10] == cycle_conditions(pool, 7, seed=2, first_index=3)
    assert [c.source_id for c in first] != [c.source_id for c in cycle_conditions(pool, 7, seed=3)]


# --- training -----------------------------------------------------------------------------------------------

def test_training_lowers_both_losses(tmp_path):
    data = TrainingData(blob_images(12, (16, 16)), mammo_conditions(12))
    config = tiny_config(ae_steps=20, unet_steps=30)
    out = tmp_path / "ckpt"
    train(config, data, out, seed=0, progress=False, max_steps=20)  # the autoencoder stage only

    def fixed_batch_loss() -> float:
        gen = LatentDiffusionGenerator.load(out)
        latents = encode_all(gen, data.images) * gen.latent_scale
        cond = gen.encode_conditions(data.conditions)
        with torch.no_grad():  # the same noise, timesteps and dropout before and after
            return float(diffusion_loss(gen, latents, cond, torch.Generator().manual_seed(123), 0.0))

    before = fixed_batch_loss()
    result = train(config, data, out, seed=0, progress=False)
    after = fixed_batch_loss()
    assert result.state.stage == "complete"
    ae_losses = [h["loss"] for h in result.state.history if h["stage"] == "autoencoder"]
    assert ae_losses[-1] < 0.7 * ae_losses[0]
    assert after < 0.8 * before, (before, after)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    data = TrainingData(blob_images(8, (16, 16)), mammo_conditions(8))
    config = tiny_config(ae_steps=12, unet_steps=12)
    train(config, data, tmp_path / "straight", seed=5, progress=False)
    for _ in range(4):  # stop after 7 steps each time: inside the autoencoder stage, then inside diffusion
        train(config, data, tmp_path / "resumed", seed=5, progress=False, max_steps=7)
    a, b = LDM2D.load(tmp_path / "straight"), LDM2D.load(tmp_path / "resumed")
    for module_a, module_b in zip((a.backend.autoencoder, a.backend.unet, a.backend.label_encoder),
                                  (b.backend.autoencoder, b.backend.unet, b.backend.label_encoder)):
        for (name, pa), pb in zip(module_a.state_dict().items(), module_b.state_dict().values()):
            assert torch.allclose(pa, pb, atol=1e-6), name
    assert a.latent_scale == pytest.approx(b.latent_scale, rel=1e-6)


def test_training_longer_continues_a_finished_run_exactly(tmp_path):
    data = TrainingData(blob_images(8, (16, 16)), mammo_conditions(8))
    train(tiny_config(ae_steps=4, unet_steps=10), data, tmp_path / "straight", seed=2, progress=False)
    train(tiny_config(ae_steps=4, unet_steps=4), data, tmp_path / "longer", seed=2, progress=False)
    result = train(tiny_config(ae_steps=4, unet_steps=10), data, tmp_path / "longer", seed=2, progress=False)
    assert result.steps_this_run == 6 and result.state.stage == "complete"
    a, b = LDM2D.load(tmp_path / "straight"), LDM2D.load(tmp_path / "longer")
    for (name, pa), pb in zip(a.backend.unet.state_dict().items(), b.backend.unet.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert b.describe()["config"]["unet"]["steps"] == 10


def test_training_refuses_an_out_folder_of_another_run(tmp_path, trained_2d):
    from audit.errors import AuditInputError

    _, data = trained_2d
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(AuditInputError, match="not a resumable training checkpoint"):
        train(tiny_config(), data, tmp_path / "other", progress=False)


# --- sampling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["trained_2d", "trained_3d"])
def test_sampling_is_deterministic_and_batch_size_independent(which, request):
    out, data = request.getfixturevalue(which)
    gen = LatentDiffusionGenerator.load(out)
    conds = data.conditions[:5]
    full = gen.sample(conds, seed=11)
    assert full.shape == (5, *gen.shape) and full.dtype == np.float32
    assert 0.0 <= full.min() and full.max() <= 1.0
    assert np.array_equal(full, gen.sample(conds, seed=11))
    pieces = np.concatenate([gen.sample(conds[:2], seed=11), gen.sample(conds[2:], seed=11, first_index=2)])
    np.testing.assert_allclose(pieces, full, atol=1e-5)
    singles = np.concatenate([gen.sample([c], seed=11, first_index=i) for i, c in enumerate(conds)])
    np.testing.assert_allclose(singles, full, atol=1e-5)
    assert np.abs(gen.sample(conds, seed=12) - full).mean() > 1e-3


@pytest.mark.parametrize("which", ["trained_2d", "trained_3d"])
def test_save_load_sample_reproduces(which, request, tmp_path):
    from generators.checkpoint import atomic_folder

    out, data = request.getfixturevalue(which)
    gen = LatentDiffusionGenerator.load(out)
    assert type(gen) is (LDM2D if which == "trained_2d" else LDM3D)
    with atomic_folder(tmp_path / "copy") as scratch:
        gen.save(scratch)
    again = LatentDiffusionGenerator.load(tmp_path / "copy")
    np.testing.assert_allclose(again.sample(data.conditions[:3], seed=4), gen.sample(data.conditions[:3], seed=4),
                               atol=1e-6)
    assert again.describe()["checkpoint_hash"] == gen.describe()["checkpoint_hash"]
    assert [c.source_id for c in again.training_conditions] == [c.source_id for c in data.conditions]


def test_changing_the_condition_changes_the_image(trained_2d, trained_3d):
    gen2 = LatentDiffusionGenerator.load(trained_2d[0])
    base = Condition(birads=1, density="A", view="CC", laterality="L", findings=("No Finding",))
    variants = [Condition(**{**base.__dict__, "density": "D"}),
                Condition(**{**base.__dict__, "view": "MLO"}),
                Condition(**{**base.__dict__, "findings": ("Mass",), "boxes": (Box(2, 2, 14, 14, "Mass"),)})]
    images = gen2.sample([base] * 4, seed=1)
    changed = gen2.sample(variants, seed=1, first_index=1)  # same noise as images[1:]
    for k in range(3):
        assert np.abs(changed[k] - images[k + 1]).mean() > 1e-4, k
    gen3 = LatentDiffusionGenerator.load(trained_3d[0])
    a = gen3.sample(brain_conditions(2)[:1], seed=1)
    b = gen3.sample(brain_conditions(2)[1:], seed=1)
    assert np.abs(a - b).mean() > 1e-4


def test_guidance_scale_is_honoured(trained_2d):
    gen = LatentDiffusionGenerator.load(trained_2d[0])
    conds = trained_2d[1].conditions[:2]
    plain = gen.with_sampling(guidance_scale=1.0).sample(conds, seed=0)
    guided = gen.with_sampling(guidance_scale=4.0).sample(conds, seed=0)
    assert np.abs(plain - guided).mean() > 1e-4
    assert gen.with_sampling(guidance_scale=1.0).describe()["config"]["sampling"]["guidance_scale"] == 1.0


# --- white box ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["trained_2d", "trained_3d"])
def test_denoiser_exposes_noise_predictor_scheduler_and_encoder(which, request):
    out, data = request.getfixturevalue(which)
    gen = LatentDiffusionGenerator.load(out)
    den = gen.denoiser()
    x0 = den.encode(data.images[:3, 0].numpy())
    assert tuple(x0.shape) == (3, *gen.backend.latent_shape()) and den.space == "latent"
    assert torch.equal(x0, den.encode(data.images[:3, 0]))  # deterministic (posterior mean)
    a = den.alphas_cumprod
    assert a.shape == (1000,) and bool((a[1:] < a[:-1]).all()) and 0 < float(a[-1]) < float(a[0]) < 1
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 500, 900])
    x_t = den.add_noise(x0, noise, t)
    assert torch.allclose(x_t, den.scheduler.add_noise(x0, noise, t), atol=1e-5)
    eps_cond = den.predict_noise(x_t, t, data.conditions[:3])
    eps_null = den.predict_noise(x_t, t, None)
    assert eps_cond.shape == x0.shape and not torch.allclose(eps_cond, eps_null)
    # the training loss is this predictor's error: a trained model beats predicting zero at mid-range t
    assert float((eps_cond - noise).pow(2).mean()) < float(noise.pow(2).mean())


def test_conditions_csv_round_trip(tmp_path):
    from generators.conditions import condition_to_row, write_rows_csv

    conds = mammo_conditions(3) + brain_conditions(1)
    write_rows_csv(tmp_path / "c.csv", [condition_to_row(c) for c in conds], ("source_id",))
    assert read_conditions_csv(tmp_path / "c.csv") == conds


@pytest.mark.parametrize("which", ["trained_2d", "trained_3d"])
def test_fused_ddim_step_equals_the_library_scheduler_step(which, request):
    from generators.sampling import ddim_sample

    out, data = request.getfixturevalue(which)
    gen = LatentDiffusionGenerator.load(out)
    noise = per_image_noise(gen.backend.latent_shape(), seed=0, indices=range(2))
    cond = gen.encode_conditions(data.conditions[:2])
    results = []
    for reference in (False, True):
        timesteps, step = gen.backend.ddim(7, reference=reference)
        results.append(ddim_sample(gen.predict_noise, noise, cond, timesteps, step, guidance_scale=2.0))
    assert torch.allclose(results[0], results[1], atol=1e-4), (results[0] - results[1]).abs().max()


def test_nearest_ncc_finds_the_copied_training_image_in_chunks():
    from audit.metrics.similarity import ncc
    from generators.memorization import nearest_ncc

    rng = np.random.default_rng(0)
    train_images = rng.random((9, 12, 12))
    queries = np.stack([train_images[4] * 0.5 + 0.2, rng.random((12, 12)), train_images[7]])
    best, index = nearest_ncc(queries, train_images, chunk=2)
    assert index[0] == 4 and index[2] == 7 and best[0] == pytest.approx(1.0) and best[2] == pytest.approx(1.0)
    assert best[1] == pytest.approx(ncc(queries[1:2], train_images[index[1]][None])[0])
    assert best[1] < 0.5
