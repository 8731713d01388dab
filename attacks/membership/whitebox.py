"""White-box membership attacks on diffusion models: they query the noise predictor ε_θ through
`Generator.denoiser()` — in latent space for our LDMs, in pixel space for a diffusers pipeline folder.

Every attack maps a batch of x0 (the model's own space) to one score per sample, higher = more likely a member,
and declares how many ε_θ calls it makes per sample. Scores of several timesteps are averaged as logs (each
timestep weighs alike whatever the scale of its error); with one timestep an attack ranks samples exactly as the
published score does. Random noise (the loss attack's ε) comes from a generator seeded by (seed, attack stream,
the sample's record id), so a sample's score does not depend on the batch it was scored in or on the order.

Defaults and where they come from:
- `loss`: t ∈ {100, 200, 300} of 1000, one noise draw each — the intermediate timesteps Matsumoto et al. (2023)
  found most vulnerable for the denoising-loss attack. Score = −log mean (ε − ε_θ(x_t, t))².
- `pia`: t = 200, ℓ4 (p = 4) — PIA (Kong et al., ICLR 2024): ε0 = ε_θ(x0, 0) replaces random noise,
  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε0, score = −log mean |ε0 − ε_θ(x_t, t)|^4; t from the 100–300 range where
  loss-type attacks peak (not tuned on our data). 1 + len(timesteps) calls.
- `secmi`: t_sec = 100, step k = 10 — SecMI's defaults (Duan et al., ICML 2023): deterministic DDIM inversion
  x0 → x_k → … → x_tsec (ε_θ at each level, t = 0 first with ᾱ_0, as SecMI does), one deterministic reverse
  step x_tsec → x'_(tsec−k), one inversion step back to x̃_tsec; score = −log mean (x_tsec − x̃_tsec)² (the
  "t-error"). t_sec/k + 2 calls.
- `sima`: t ∈ {0, 20, 40, 60, 80, 100} — the grid of the SimA authors' code (interval 20, 5 attacks), averaged
  here instead of reporting the best timestep after seeing the labels; score = −log mean |ε_θ(x0, t)|^4.
Conditional models: `conditioning: own` (default) gives each candidate its own labels (members: their training
condition), `null` the classifier-free null condition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from pydantic import field_validator, model_validator

from audit.errors import AuditInputError
from audit.parallel import Source, executor_of, image_loader, resolve, shipped
from audit.registry import Params, Runtime
from generators.base import Condition, Denoiser, image_seed

Conditioning = Literal["own", "null"]
TINY = 1e-30


def record_key(record_id: str) -> int:
    """A stable 60-bit integer of a record id: the per-sample seed index (order- and batch-independent)."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:15], 16)


def per_sample_noise(shape: Sequence[int], seed: int, stream: int, keys: Sequence[int], device) -> torch.Tensor:
    """Standard normal noise (len(keys), *shape): row i from its own generator seeded by (seed, stream, keys[i])."""
    base = image_seed(seed, stream)
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(image_seed(base, k))) for k in keys]
    return torch.stack(rows).to(device)


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM update between two noise levels (either direction):
    x̂0 = (x − √(1−ᾱ_from)·ε)/√ᾱ_from, then √ᾱ_to·x̂0 + √(1−ᾱ_to)·ε. Towards lower noise it is DDIMScheduler.step
    (η = 0); towards higher noise it is DDIM inversion (DDIMInverseScheduler.step)."""
    x0_hat = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from ** 0.5
    return alpha_to ** 0.5 * x0_hat + (1 - alpha_to) ** 0.5 * eps


def mean_power(x: torch.Tensor, p: int) -> torch.Tensor:
    """Per-sample mean |x|^p over all but the first axis (the papers' sums divided by a constant)."""
    return x.abs().pow(p).flatten(1).mean(dim=1)


def log_mean_over_timesteps(errors: list[torch.Tensor]) -> torch.Tensor:
    """Average of log errors over timesteps: scale-free, so each timestep counts alike."""
    return torch.stack([e.double().clamp_min(TINY).log() for e in errors]).mean(dim=0)


class WhiteBoxAttack:
    """Base: declared params, the check of timesteps against the model, conditioning, the query count."""

    access = "white-box"
    name = "white-box"

    class Params(Params):
        conditioning: Conditioning = "own"

    def __init__(self, params: "WhiteBoxAttack.Params", runtime: Runtime):
        self.params = params
        self.runtime = runtime

    # --- what the attack needs -----------------------------------------------------------------------------------
    def requirement(self, target) -> str | None:
        if target.denoiser is None:
            return target.no_denoiser_reason or "the model gives no white-box access (no denoiser)"
        return None

    def timesteps_used(self) -> list[int]:
        return []

    def check(self, denoiser: Denoiser) -> None:
        """Timesteps inside the model's schedule; called before any work."""
        last = denoiser.num_train_timesteps - 1
        bad = [t for t in self.timesteps_used() if not 0 <= t <= last]
        if bad:
            raise AuditInputError(None, f"attack '{self.name}': timestep {bad[0]} outside the model's 0..{last}")

    @property
    def queries_per_sample(self) -> int:
        raise NotImplementedError

    def conditions_for(self, conditions: Sequence[Condition] | None):
        return None if (conditions is None or self.params.conditioning == "null") else conditions

    def describe(self) -> dict:
        return {"access": self.access, "params": self.params.model_dump(mode="json"),
                "queries_per_sample": self.queries_per_sample}

    def score_batch(self, denoiser: Denoiser, x0: torch.Tensor, conditions: Sequence[Condition] | None,
                    keys: Sequence[int]) -> torch.Tensor:
        """(B,) scores, higher = more likely a member."""
        raise NotImplementedError


class TimestepParams(WhiteBoxAttack.Params):
    """Params of an attack that queries at chosen timesteps with an ℓp error."""

    timesteps: tuple[int, ...] = (100,)
    p: int = 2

    @field_validator("timesteps")
    @classmethod
    def _distinct(cls, values):
        if not values:
            raise ValueError("give at least one timestep")
        if len(set(values)) != len(values):
            raise ValueError("a timestep is listed twice")
        return values

    @field_validator("p")
    @classmethod
    def _p(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v


def _t(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


class LossAttack(WhiteBoxAttack):
    name = "loss"

    class Params(TimestepParams):
        timesteps: tuple[int, ...] = (100, 200, 300)
        p: Literal[2] = 2  # the denoising loss is the squared error
        draws: int = 1  # noise draws per timestep (averaged)

        @field_validator("draws")
        @classmethod
        def _positive(cls, v):
            if v < 1:
                raise ValueError("must be at least 1")
            return v

    def timesteps_used(self) -> list[int]:
        return list(self.params.timesteps)

    @property
    def queries_per_sample(self) -> int:
        return len(self.params.timesteps) * self.params.draws

    @torch.no_grad()
    def score_batch(self, denoiser, x0, conditions, keys):
        cond = self.conditions_for(conditions)
        errors = []
        for j, t in enumerate(self.params.timesteps):
            draws = []
            for d in range(self.params.draws):
                noise = per_sample_noise(x0.shape[1:], self.runtime.seed, 1000 * j + d, keys, x0.device)
                t_batch = _t(x0, t)
                eps = denoiser.predict_noise(denoiser.add_noise(x0, noise, t_batch), t_batch, cond)
                draws.append(mean_power(eps - noise, 2))
            errors.append(torch.stack(draws).mean(dim=0))
        return -log_mean_over_timesteps(errors)


class PIAAttack(WhiteBoxAttack):
    name = "pia"

    class Params(TimestepParams):
        timesteps: tuple[int, ...] = (200,)
        p: int = 4  # the ℓp of the error (PIA: 4)

    def timesteps_used(self) -> list[int]:
        return [0, *self.params.timesteps]

    @property
    def queries_per_sample(self) -> int:
        return 1 + len(self.params.timesteps)

    @torch.no_grad()
    def score_batch(self, denoiser, x0, conditions, keys):
        cond = self.conditions_for(conditions)
        eps0 = denoiser.predict_noise(x0, _t(x0, 0), cond)  # the proximal initial noise
        errors = []
        for t in self.params.timesteps:
            t_batch = _t(x0, t)
            eps_t = denoiser.predict_noise(denoiser.add_noise(x0, eps0, t_batch), t_batch, cond)
            errors.append(mean_power(eps0 - eps_t, self.params.p))
        return -log_mean_over_timesteps(errors)


class SecMIAttack(WhiteBoxAttack):
    name = "secmi"

    class Params(WhiteBoxAttack.Params):
        t_sec: int = 100
        step: int = 10

        @model_validator(mode="after")
        def _grid(self):
            if self.step < 1 or self.t_sec < self.step or self.t_sec % self.step:
                raise ValueError("t_sec must be a positive multiple of step (step ≥ 1)")
            return self

    def timesteps_used(self) -> list[int]:
        return list(range(0, self.params.t_sec + 1, self.params.step))

    @property
    def queries_per_sample(self) -> int:
        return self.params.t_sec // self.params.step + 2

    def invert(self, denoiser: Denoiser, x0: torch.Tensor, cond) -> torch.Tensor:
        """Deterministic DDIM inversion x0 (taken as the level t = 0) → x_tsec in steps of k."""
        alphas = denoiser.alphas_cumprod.double()
        x = x0
        for t in range(0, self.params.t_sec, self.params.step):
            eps = denoiser.predict_noise(x, _t(x, t), cond)
            x = ddim_move(x, eps, float(alphas[t]), float(alphas[t + self.params.step]))
        return x

    @torch.no_grad()
    def score_batch(self, denoiser, x0, conditions, keys):
        cond = self.conditions_for(conditions)
        alphas = denoiser.alphas_cumprod.double()
        t, k = self.params.t_sec, self.params.step
        x_t = self.invert(denoiser, x0, cond)
        x_prev = ddim_move(x_t, denoiser.predict_noise(x_t, _t(x_t, t), cond), float(alphas[t]), float(alphas[t - k]))
        x_back = ddim_move(x_prev, denoiser.predict_noise(x_prev, _t(x_prev, t - k), cond), float(alphas[t - k]),
                           float(alphas[t]))
        return -log_mean_over_timesteps([mean_power(x_t - x_back, 2)])


class SimAAttack(WhiteBoxAttack):
    name = "sima"

    class Params(TimestepParams):
        timesteps: tuple[int, ...] = (0, 20, 40, 60, 80, 100)
        p: int = 4

    def timesteps_used(self) -> list[int]:
        return list(self.params.timesteps)

    @property
    def queries_per_sample(self) -> int:
        return len(self.params.timesteps)

    @torch.no_grad()
    def score_batch(self, denoiser, x0, conditions, keys):
        cond = self.conditions_for(conditions)
        norms = [mean_power(denoiser.predict_noise(x0, _t(x0, t), cond), self.params.p) for t in self.params.timesteps]
        return -log_mean_over_timesteps(norms)


def stack_batch(dataset, records) -> tuple[np.ndarray, list[Condition]]:
    """Images of some records and each one's own condition (labels + lesion boxes)."""
    loaded = [dataset.load(r) for r in records]
    images = np.stack([image for image, _ in loaded])
    return images, [Condition.from_record(r, boxes) for r, (_, boxes) in zip(records, loaded)]


@dataclass(frozen=True)
class DenoiserSource(Source):
    """How a worker gets white-box access itself: it loads the generator (`GeneratorSource`) and asks it for its
    denoiser."""

    generator: Source

    def load(self) -> Denoiser:
        return self.generator.load().denoiser()


class ScoreWhiteBox:
    """One batch of records on a worker (`audit.parallel`): read the images, encode them once, score them with every
    attack. Per record: (scores by attack, that record's share of each attack's seconds)."""

    def __init__(self, attacks: Sequence[WhiteBoxAttack], denoiser, loader, conditional: bool):
        self.attacks, self.loader, self.conditional = list(attacks), loader, conditional
        self.denoiser = resolve(denoiser)

    def __call__(self, records) -> list[tuple[dict[str, float], dict[str, float]]]:
        import time

        images, conditions = stack_batch(self.loader, records)
        x0 = self.denoiser.encode(images)
        keys = [record_key(r.id) for r in records]
        scores, seconds = {}, {}
        for attack in self.attacks:
            started = time.perf_counter()
            scores[attack.name] = attack.score_batch(self.denoiser, x0, conditions if self.conditional else None,
                                                     keys).double().cpu().numpy()
            seconds[attack.name] = (time.perf_counter() - started) / len(records)
        return [({name: float(s[i]) for name, s in scores.items()}, seconds) for i in range(len(records))]


def score_whitebox(attacks: Sequence[WhiteBoxAttack], denoiser: Denoiser, dataset, runtime: Runtime,
                   conditional: bool = True, progress: str | None = None, denoiser_source: Source | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Scores of every attack for every record of `dataset` (images at the generator's shape), and the seconds
    each attack spent (encoding excluded: it is shared). Each batch is encoded once (x0 = the denoiser's
    encode) and given to every attack. The batches run on `runtime.executor` (in process by default; on Ray
    actors each loads the model from `denoiser_source`, else the denoiser object travels): the same batches of
    records either way, so the scores are the same."""
    from audit.progress import progress_bar

    for attack in attacks:
        attack.check(denoiser)
    executor = executor_of(runtime)
    records = list(dataset.records)
    bar = progress_bar(total=len(records), desc=progress) if progress else None
    results = executor.map_batches(
        ScoreWhiteBox, records, batch_size=runtime.batch_size,
        constructor_kwargs={"attacks": attacks, "denoiser": shipped(executor, denoiser, denoiser_source),
                            "loader": image_loader(dataset), "conditional": conditional},
        on_group=(lambda _, r: bar.update(len(r))) if bar is not None else None)
    if bar is not None:
        bar.close()
    scores = {a.name: np.array([per_record[a.name] for per_record, _ in results], np.float64) for a in attacks}
    seconds = {a.name: float(sum(spent[a.name] for _, spent in results)) for a in attacks}
    return scores, seconds
