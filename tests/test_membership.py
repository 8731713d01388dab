"""Membership inference: evaluation against scikit-learn, the control run, label matching on planted labels,
white-box attack scores against direct computations with the diffusers / MONAI schedulers, determinism, the
black-box distance attack on planted copies, and a trained model's members separated where an untrained one's
are not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from attacks.membership.blackbox import nearest_synthetic
from attacks.membership.evaluate import control_estimate, control_halves, evaluate_attack
from attacks.membership.members import check_disjoint, match_pairs
from attacks.membership.pipeline import ArraySet, AttackTarget, run_membership
from attacks.membership.registry import ATTACKS
from attacks.membership.whitebox import per_sample_noise, record_key, score_whitebox
from audit.data.records import Labels, Record
from audit.errors import AuditInputError
from audit.registry import Runtime
from generators.base import Condition, Denoiser


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- evaluation ------------------------------------------------------------------------------------------------

def test_auc_and_tpr_at_fpr_equal_scikit_learn_on_hand_made_scores():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(150, bool), np.zeros(250, bool)]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    ev = evaluate_attack(labels, scores, n_boot=100, seed=0)
    assert ev.figures["auc"].value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for name, limit in (("tpr_at_fpr_1pct", 0.01), ("tpr_at_fpr_0.1pct", 0.001)):
        assert ev.figures[name].value == pytest.approx(tpr[fpr <= limit].max())
    # balanced accuracy at the oracle threshold: brute force over every threshold
    best = max(((scores[labels] > t).mean() + (scores[~labels] <= t).mean()) / 2 for t in np.r_[scores, -9.0])
    assert ev.figures["balanced_accuracy"].value == pytest.approx(best)
    auc = ev.figures["auc"]
    assert auc.ci_low < auc.value < auc.ci_high and auc.n == 400


def test_tpr_at_low_fpr_on_a_hand_made_case():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([9, 8, 3, 1, 7, 2, 0, -1.0])
    ev = evaluate_attack(labels, scores, n_boot=50)
    # above every non-member (7): members 9 and 8 → TPR 0.5 at FPR 0 ≤ 1 %
    assert ev.figures["tpr_at_fpr_1pct"].value == 0.5 and ev.figures["tpr_at_fpr_0.1pct"].value == 0.5
    assert ev.figures["auc"].value == pytest.approx(roc_auc_score(labels, scores))


def test_control_run_on_random_scores_covers_one_half():
    labels = np.r_[np.ones(60, bool), np.zeros(60, bool)]
    ev = evaluate_attack(labels, np.random.default_rng(0).random(120), n_boot=200)
    assert ev.control_covers_half and ev.figures["control_auc"].n == 60
    covered = [control_estimate(np.random.default_rng(seed).random(60), n_boot=200, seed=seed)
               for seed in range(40)]
    # a 95 % interval: about 38 of 40 cover 0.5; a broken control (e.g. members leaking in) would cover few
    assert sum(c.ci_low <= 0.5 <= c.ci_high for c in covered) >= 34


def test_control_run_stays_at_one_half_when_the_attack_separates_perfectly():
    labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = np.r_[np.linspace(10, 11, 50), np.random.default_rng(0).random(50)]
    ev = evaluate_attack(labels, scores, n_boot=200)
    assert ev.figures["auc"].value == 1.0 and ev.control_covers_half
    halves = control_halves(50, 0)
    assert halves.sum() == 25 and not np.array_equal(halves, control_halves(50, 1))


def test_several_images_of_one_patient_are_resampled_together():
    """Four views per patient with equal scores: resampling images would pretend to 4× the data. The interval
    from resampling patients is wider, and the control keeps each patient on one side."""
    rng = np.random.default_rng(4)
    patient_scores = rng.normal(0, 1, 30) + np.r_[np.full(15, 0.8), np.zeros(15)]
    scores = np.repeat(patient_scores, 4)
    labels = np.repeat(np.r_[np.ones(15, bool), np.zeros(15, bool)], 4)
    patients = np.repeat([f"p{i}" for i in range(30)], 4)
    by_image = evaluate_attack(labels, scores, n_boot=300)
    by_patient = evaluate_attack(labels, scores, n_boot=300, groups=patients)
    assert by_patient.figures["auc"].value == by_image.figures["auc"].value
    width = lambda e: e.figures["auc"].ci_high - e.figures["auc"].ci_low
    assert width(by_patient) > 1.5 * width(by_image)  # ≈ 2 (√4) in theory
    halves = control_halves(60, 0, patients[~labels])
    for p in np.unique(patients[~labels]):
        assert len(set(halves[patients[~labels] == p])) == 1
    assert "patients resampled" in by_patient.figures["auc"].method


# --- members and non-members --------------------------------------------------------------------------------------

def record(rid: str, view: str, density: str, birads: int, patient: str | None = None) -> Record:
    return Record(id=rid, patient_id=patient or rid, split="x", modality="MG", path=f"/nowhere/{rid}.dcm",
                  view=view, labels=Labels(birads=birads, density=density))


def test_matching_pairs_planted_labels_exactly_where_possible():
    members = [record(f"m{i}", ("CC", "MLO")[i % 2], "ABCD"[i % 4], 1 + i % 3) for i in range(12)]
    # exact partners for members 0..7; for 8..11 only the same view and density exist (BI-RADS 5 never occurs
    # among members); plus distractors of other views
    pool = [record(f"n{i}", m.view, m.labels.density, m.labels.birads) for i, m in enumerate(members[:8])]
    pool += [record(f"p{i}", m.view, m.labels.density, 5) for i, m in enumerate(members[8:])]
    pool += [record(f"d{i}", "XX", "Z", 9) for i in range(10)]
    matching = match_pairs(members, pool, ("view", "density", "birads"), seed=1)
    assert matching.n_pairs == 12
    summary = matching.summary()
    assert summary["matched_exactly"] == 8
    assert summary["matched_on_leading_fields"] == {"view,density,birads": 8, "view,density": 4, "view": 0,
                                                    "none": 0}
    for m, n, depth in zip(matching.members, matching.nonmembers, matching.matched_on):
        assert m.view == n.view and m.labels.density == n.labels.density
        assert (m.labels.birads == n.labels.birads) == (depth == 3)
    assert not {r.id for r in matching.nonmembers} & {f"d{i}" for i in range(10)}


def test_matching_subsamples_the_larger_side_either_way():
    members = [record(f"m{i}", "CC", "A", 1) for i in range(30)]
    few = [record(f"n{i}", "CC", "A", 1) for i in range(5)]
    matching = match_pairs(members, few, ("view",), seed=0)
    assert matching.n_pairs == 5 and {r.id for r in matching.nonmembers} == {f"n{i}" for i in range(5)}
    assert len({r.id for r in matching.members}) == 5
    assert match_pairs(members, few, ("view",), seed=0).members == matching.members  # seeded


def test_overlapping_members_and_nonmembers_are_refused():
    a, b = record("a", "CC", "A", 1), record("b", "CC", "A", 1)
    with pytest.raises(AuditInputError, match="both members and non-members"):
        check_disjoint([a, b], [b])
    with pytest.raises(AuditInputError, match="identical pixels"):
        check_disjoint([a], [b], ["x1"], ["x1"])
    assert check_disjoint([a], [record("c", "CC", "A", 1, patient="a")]) == {"patients_on_both_sides": 1}


# --- white-box attacks against the schedulers ---------------------------------------------------------------------

def tiny_unet(size: int = 8, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False).eval()


def pixel_denoiser(unet, scheduler) -> Denoiser:
    def predict(x_t, t, conditions):
        with torch.no_grad():
            return unet(x_t, torch.as_tensor(t).long()).sample

    return Denoiser(predict, lambda images: torch.as_tensor(np.asarray(images))[:, None] * 2 - 1,
                    torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), scheduler, "pixel")


@dataclasses.dataclass
class ImageSet:
    """A minimal in-memory dataset with records (what the membership pipeline reads from an ImageDataset)."""

    records: list
    by_id: dict

    @classmethod
    def of(cls, images: np.ndarray, prefix: str = "img", labels=None) -> "ImageSet":
        records = [record(f"{prefix}{i}", "CC", "A", 1) for i in range(len(images))]
        if labels is not None:
            records = [dataclasses.replace(r, labels=lab) for r, lab in zip(records, labels)]
        return cls(records, {r.id: np.asarray(images[i], np.float32) for i, r in enumerate(records)})

    @property
    def shape(self):
        return next(iter(self.by_id.values())).shape

    def __len__(self):
        return len(self.records)

    def load(self, rec):
        return self.by_id[rec.id], np.zeros((0, 4), np.float32)

    def iter_images(self, batch_size=32, progress=None):
        for s in range(0, len(self.records), batch_size):
            batch = self.records[s:s + batch_size]
            yield np.stack([self.by_id[r.id] for r in batch]), batch

    def stack(self, progress=None):
        return np.stack([self.by_id[r.id] for r in self.records])


@pytest.fixture(scope="module")
def pixel_model():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    unet = tiny_unet()
    images = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    return unet, scheduler, pixel_denoiser(unet, scheduler), ImageSet.of(images)


def attack_scores(name, options, denoiser, data, batch_size=8, seed=0, conditional=False):
    attack = ATTACKS.create(name, options, Runtime(batch_size=batch_size, seed=seed))
    scores, _ = score_whitebox([attack], denoiser, data, Runtime(batch_size=batch_size, seed=seed),
                               conditional=conditional)
    return scores[name], attack


def test_loss_attack_equals_the_scheduler_add_noise_computation(pixel_model):
    unet, scheduler, den, data = pixel_model
    ours, attack = attack_scores("loss", {"timesteps": [10, 300]}, den, data)
    x0 = torch.as_tensor(data.stack())[:, None] * 2 - 1
    keys = [record_key(r.id) for r in data.records]
    logs = []
    for j, t in enumerate((10, 300)):
        noise = per_sample_noise(x0.shape[1:], 0, 1000 * j, keys, "cpu")
        t_batch = torch.full((len(x0),), t)
        with torch.no_grad():
            eps = unet(scheduler.add_noise(x0, noise, t_batch), t_batch).sample
        logs.append(((eps - noise) ** 2).mean(dim=(1, 2, 3)).double().log())
    np.testing.assert_allclose(ours, -torch.stack(logs).mean(0).numpy(), rtol=1e-5)
    assert attack.queries_per_sample == 2


def test_pia_equals_the_direct_computation(pixel_model):
    unet, scheduler, den, data = pixel_model
    ours, attack = attack_scores("pia", {}, den, data)
    x0 = torch.as_tensor(data.stack())[:, None] * 2 - 1
    with torch.no_grad():
        eps0 = unet(x0, torch.zeros(len(x0), dtype=torch.long)).sample
        t = torch.full((len(x0),), 200)
        eps_t = unet(scheduler.add_noise(x0, eps0, t), t).sample
    expected = -((eps0 - eps_t).abs() ** 4).mean(dim=(1, 2, 3)).double().log()
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5)
    assert attack.queries_per_sample == 2


def test_secmi_inversion_and_reverse_step_equal_the_ddim_schedulers(pixel_model):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    unet, scheduler, den, data = pixel_model
    t_sec, k = 60, 20
    ours, attack = attack_scores("secmi", {"t_sec": t_sec, "step": k}, den, data)
    assert attack.queries_per_sample == t_sec // k + 2
    x0 = torch.as_tensor(data.stack())[:, None] * 2 - 1
    inverse = DDIMInverseScheduler.from_config(scheduler.config, clip_sample=False)
    inverse.set_timesteps(1000 // k)
    reverse = DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=False)
    reverse.set_timesteps(1000 // k)

    def eps(x, t):
        with torch.no_grad():
            return unet(x, torch.full((len(x),), t)).sample

    x = x0
    for t in range(0, t_sec, k):  # DDIMInverseScheduler.step(ε(x_t, t), t + k, x_t) → x_{t+k}
        x = inverse.step(eps(x, t), t + k, x).prev_sample
    x_prev = reverse.step(eps(x, t_sec), t_sec, x, eta=0.0).prev_sample
    x_back = inverse.step(eps(x_prev, t_sec - k), t_sec, x_prev).prev_sample
    expected = -((x - x_back) ** 2).mean(dim=(1, 2, 3)).double().log()
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4)


def test_sima_equals_the_direct_computation(pixel_model):
    unet, scheduler, den, data = pixel_model
    ours, attack = attack_scores("sima", {"timesteps": [0, 40]}, den, data)
    x0 = torch.as_tensor(data.stack())[:, None] * 2 - 1
    logs = []
    for t in (0, 40):
        with torch.no_grad():
            logs.append((unet(x0, torch.full((len(x0),), t)).sample.abs() ** 4).mean(dim=(1, 2, 3)).double().log())
    np.testing.assert_allclose(ours, -torch.stack(logs).mean(0).numpy(), rtol=1e-5)
    assert attack.queries_per_sample == 2


@pytest.mark.parametrize("name", ["loss", "pia", "secmi", "sima"])
def test_scores_are_deterministic_and_batch_size_independent(pixel_model, name):
    _, _, den, data = pixel_model
    options = {"secmi": {"t_sec": 40, "step": 20}}.get(name, {})
    one, _ = attack_scores(name, options, den, data, batch_size=5)
    again, _ = attack_scores(name, options, den, data, batch_size=5)
    split, _ = attack_scores(name, options, den, data, batch_size=2)
    np.testing.assert_array_equal(one, again)
    np.testing.assert_allclose(one, split, rtol=1e-5, atol=1e-6)
    other_seed, _ = attack_scores(name, options, den, data, batch_size=5, seed=1)
    assert np.array_equal(one, other_seed) == (name != "loss")  # only the loss attack draws noise


def test_timesteps_outside_the_schedule_are_refused_before_work(pixel_model):
    _, _, den, data = pixel_model
    with pytest.raises(AuditInputError, match="timestep 1000 outside the model's 0..999"):
        attack_scores("sima", {"timesteps": [1000]}, den, data)
    with pytest.raises(AuditInputError, match="unknown parameter 'steps'"):
        ATTACKS.create("secmi", {"steps": 3})
    with pytest.raises(AuditInputError, match="t_sec must be a positive multiple"):
        ATTACKS.create("secmi", {"t_sec": 25, "step": 10})


def test_ldm3d_loss_attack_equals_monai_add_noise_with_the_members_own_labels():
    """Latent space, conditional: the score equals MONAI's DDPMScheduler.add_noise + the UNet called with each
    candidate's own labels; with `conditioning: null` the labels do not enter."""
    from monai.networks.schedulers import DDPMScheduler as MonaiDDPM

    from generators.conditions import LabelVocabulary
    from generators.config import GeneratorConfig
    from generators.ldm import LatentDiffusionGenerator

    config = GeneratorConfig(kind="ldm3d", conditioning={"fields": ("lesion",)},
                             autoencoder={"channels": (8, 16), "latent_channels": 2, "norm_num_groups": 4},
                             unet={"channels": (16, 32), "attention_levels": (False, False), "norm_num_groups": 4,
                                   "head_channels": 16})
    conditions = [Condition(extra=(("lesion", v),)) for v in ("0", "1")]
    torch.manual_seed(0)
    gen = LatentDiffusionGenerator.create(config, (8, 8, 8), LabelVocabulary.build(conditions, ("lesion",)),
                                          conditions)
    torch.manual_seed(1)
    for p in gen.backend.unet.parameters():  # MONAI zero-initialises output convolutions: ε_θ ≡ 0 until trained
        if not p.data.any():
            p.data.normal_(0, 0.1)
    for p in gen.backend.unet.class_embedding.parameters():  # make the labels matter
        p.data.normal_()
    images = np.random.default_rng(1).random((4, 8, 8, 8)).astype(np.float32)
    data = ImageSet.of(images, labels=[Labels(extra=(("lesion", str(i % 2)),)) for i in range(4)])
    den = gen.denoiser()
    ours, _ = attack_scores("loss", {"timesteps": [150]}, den, data, conditional=True)
    null, _ = attack_scores("loss", {"timesteps": [150], "conditioning": "null"}, den, data, conditional=True)
    monai = MonaiDDPM(**gen.backend.scheduler_config)
    x0 = gen.encode_images(images)
    noise = per_sample_noise(x0.shape[1:], 0, 0, [record_key(r.id) for r in data.records], "cpu")
    t = torch.full((4,), 150)
    labels = torch.tensor([[1 + i % 2] for i in range(4)])  # vocabulary index of "0"/"1"
    with torch.no_grad():
        eps = gen.backend.unet(monai.add_noise(x0, noise, t), timesteps=t, class_labels=labels)
    expected = -((eps - noise) ** 2).mean(dim=(1, 2, 3, 4)).double().log()
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5)
    assert np.abs(ours - null).max() > 1e-4


# --- black box ----------------------------------------------------------------------------------------------------

def test_nearest_synthetic_equals_brute_force_and_the_dcr_share():
    rng = np.random.default_rng(0)
    candidates = rng.random((10, 6, 6)).astype(np.float32)
    is_member = np.arange(10) < 5
    synthetic = np.concatenate([candidates[:3] + 0.01 * rng.standard_normal((3, 6, 6)),
                                rng.random((4, 6, 6))]).astype(np.float32)
    near = nearest_synthetic(candidates.reshape(10, -1), is_member,
                             (synthetic[i:i + 3].reshape(-1, 36) for i in range(0, 7, 3)), "ncc")
    z = lambda a: (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    sims = z(candidates.reshape(10, -1)) @ z(synthetic.reshape(7, -1)).T / 36
    np.testing.assert_allclose(near.candidate_best, sims.max(1), atol=1e-5)
    assert near.closer_to_member == int((sims[:5].max(0) > sims[5:].max(0)).sum()) and near.n_synthetic == 7


def test_distance_attack_finds_members_copied_by_the_model():
    rng = np.random.default_rng(2)
    members, nonmembers = ImageSet.of(rng.random((24, 8, 8)), "m"), ImageSet.of(rng.random((24, 8, 8)), "n")
    copies = members.stack()[:16] + 0.05 * rng.standard_normal((16, 8, 8))
    target = AttackTarget(synthetic=ArraySet(copies), no_denoiser_reason="no model")
    result = run_membership(None, members, nonmembers, ["dcr"], {}, Runtime(), target=target, match_fields=(),
                            n_boot=200)
    fig = result.figures()
    # 16 of 24 members have a copy: AUC = (16 + 8·0.5)/24 ≈ 0.83 with the rest at chance
    assert fig["dcr/auc"].value > 0.8 and fig["dcr/tpr_at_fpr_1pct"].value >= 16 / 24 - 1e-9
    assert fig["dcr/share"].value == 1.0 and fig["dcr/share"].n == 16
    assert fig["dcr/control_auc"].ci_low <= 0.5 <= fig["dcr/control_auc"].ci_high
    fresh = run_membership(None, members, nonmembers, ["dcr"], {}, Runtime(), match_fields=(), n_boot=200,
                           target=AttackTarget(synthetic=ArraySet(rng.random((40, 8, 8)))))
    share = fresh.figures()["dcr/share"]
    assert share.ci_low <= 0.5 <= share.ci_high


def test_white_box_attacks_on_a_folder_model_are_skipped_with_the_reason_or_refused_when_named():
    rng = np.random.default_rng(3)
    members, nonmembers = ImageSet.of(rng.random((20, 8, 8)), "m"), ImageSet.of(rng.random((20, 8, 8)), "n")

    class FolderModel:
        kind = "folder"

        def denoiser(self):
            return None

        def describe(self):
            return {"kind": "folder"}

    target = AttackTarget(synthetic=ArraySet(rng.random((10, 8, 8))),
                          no_denoiser_reason="the model is a folder (its images only): white-box attacks need "
                                             "the noise predictor")
    result = run_membership(FolderModel(), members, nonmembers, ["loss", "secmi", "dcr"], {}, Runtime(),
                            target=target, match_fields=(), n_boot=50)
    assert set(result.skipped) == {"loss", "secmi"} and "folder" in result.skipped["loss"]
    assert "loss/auc" not in result.figures() and "dcr/auc" in result.figures()
    with pytest.raises(AuditInputError, match="attack 'loss' cannot run on this model: the model is a folder"):
        run_membership(FolderModel(), members, nonmembers, ["loss"], {}, Runtime(), target=target,
                       match_fields=(), explicit=True)


# --- a memorising model -----------------------------------------------------------------------------------------

def ideal_denoiser(train_images: np.ndarray, scheduler) -> Denoiser:
    """The ε-predictor that has memorised `train_images` perfectly (the optimum of the DDPM loss on them):
    E[x0 | x_t] is the posterior-weighted mean of the training images, ε = (x_t − √ᾱ_t·E[x0|x_t]) / √(1−ᾱ_t)."""
    ref = torch.as_tensor(train_images, dtype=torch.float64).flatten(1) * 2 - 1
    alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)

    def predict(x_t, t, conditions):
        a = alphas[torch.as_tensor(t).long()].view(-1, 1)
        x = x_t.double().flatten(1)
        d2 = ((x[:, None, :] - a.sqrt()[:, :, None] * ref[None]) ** 2).sum(-1)
        x0_hat = torch.softmax(-d2 / (2 * (1 - a)), dim=1) @ ref
        return ((x - a.sqrt() * x0_hat) / (1 - a).sqrt()).view_as(x_t).float()

    return Denoiser(predict, lambda im: torch.as_tensor(np.asarray(im))[:, None] * 2 - 1,
                    torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), scheduler, "pixel")


def test_every_white_box_attack_finds_the_members_of_a_memorising_model_and_not_of_another():
    from diffusers import DDPMScheduler

    images = np.random.default_rng(5).random((60, 8, 8)).astype(np.float32)
    members, nonmembers = ImageSet.of(images[:20], "m"), ImageSet.of(images[20:40], "n")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    names = ["loss", "pia", "secmi", "sima"]
    aucs = {}
    for trained_on, train in (("members", images[:20]), ("other images", images[40:])):
        result = run_membership(None, members, nonmembers, names, {}, Runtime(), match_fields=(), n_boot=100,
                                target=AttackTarget(ideal_denoiser(train, scheduler)))
        aucs[trained_on] = {n: result.figures()[f"{n}/auc"] for n in names}
        for n in names:
            control = result.figures()[f"{n}/control_auc"]
            assert control.ci_low <= 0.5 <= control.ci_high
    for n in names:  # default parameters; measured 1.0 each, and 0.50-0.60 for the model of other images
        assert aucs["members"][n].value == 1.0
        assert aucs["other images"][n].ci_low <= 0.5 <= aucs["other images"][n].ci_high


def test_attack_figures_read_as_privacy_risks():
    # reports, gates and `audit compare` read membership figures like the replica share: higher is worse
    from attacks.membership.evaluate import evaluate_attack

    result = evaluate_attack([True, True, True, False, False, False], [0.9, 0.8, 0.4, 0.5, 0.2, 0.1], n_boot=50)
    assert {name: e.higher_is_better for name, e in result.figures.items()} == {
        name: False for name in result.figures}
