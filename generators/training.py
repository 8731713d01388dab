"""Two-stage training of a latent diffusion generator: the autoencoder, then the diffusion model on its latents.

Every step's randomness (batch indices, noise, timesteps, condition dropout) comes from a generator seeded by
(seed, stage, step), and the optimizer state is checkpointed as safetensors, so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have. Checkpoints are written atomically every
`training.checkpoint_every` steps, at the end of each stage, and on Ctrl-C.

The training set is held in memory (the presets are CPU-sized: a few hundred 64² images or 32³ volumes).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from audit.data.dataset import ImageDataset
from audit.errors import AuditInputError
from generators.base import Condition, image_seed
from generators.checkpoint import (GENERATOR_FILE, atomic_folder, load_optimizer, read_json, recover_interrupted_save,
                                   save_optimizer, write_json)
from generators.conditions import LabelVocabulary, auto_fields
from generators.config import GeneratorConfig
from generators.ldm import LatentDiffusionGenerator
from generators.sampling import ConditionBatch

STAGES = ("autoencoder", "diffusion", "complete")
STATE_DIR = "training_state"


@dataclass
class TrainingState:
    run_key: str  # hash of config + seed + training record ids: a resume must continue the same run
    stage: str = "autoencoder"
    step: int = 0  # steps done in the current stage
    history: list[dict] = field(default_factory=list)  # {"stage", "step", "loss"} averaged over log_every steps
    seconds: float = 0.0  # training wall time so far, summed over resumed runs

    def to_json(self) -> dict:
        return {"run_key": self.run_key, "stage": self.stage, "step": self.step, "history": self.history,
                "seconds": round(self.seconds, 2)}


@dataclass
class TrainingData:
    images: torch.Tensor  # (N, 1, *shape) float32 [0, 1]
    conditions: list[Condition]


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(image_seed(seed, STAGES.index(stage) * 1_000_000_000 + step))


def select_training_records(dataset: ImageDataset, config: GeneratorConfig, seed: int):
    records = [r for r in dataset.records if r.split == config.training.split]
    if not records:
        raise AuditInputError(None, f"dataset '{dataset.name}' has no records in split '{config.training.split}'")
    limit = config.training.max_records
    if limit is not None and limit < len(records):
        keep = np.sort(np.random.default_rng([seed % (1 << 63), 11]).permutation(len(records))[:limit])
        records = [records[i] for i in keep]
    return records


def load_training_data(dataset: ImageDataset, records) -> TrainingData:
    images, conditions = [], []
    for record in records:
        image, boxes = dataset.load(record)
        images.append(torch.from_numpy(image))
        conditions.append(Condition.from_record(record, boxes))
    return TrainingData(torch.stack(images)[:, None], conditions)


def run_key(config: GeneratorConfig, seed: int, conditions: Sequence[Condition]) -> str:
    """What must not change for a checkpoint to continue a run. The number of diffusion steps may grow: nothing
    depends on it (constant learning rate, per-step randomness), so training longer continues the run exactly."""
    dumped = config.model_dump(mode="json")
    dumped["unet"].pop("steps")
    for cadence in ("checkpoint_every", "log_every"):
        dumped["training"].pop(cadence)
    payload = {"config": dumped, "seed": seed, "ids": [c.source_id for c in conditions]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --- the two losses (pure given their inputs) -------------------------------------------------------------------

def diffusion_loss(generator: LatentDiffusionGenerator, latents: torch.Tensor, cond: ConditionBatch,
                   rng: torch.Generator, dropout: float) -> torch.Tensor:
    """DDPM ε-prediction MSE at uniform random timesteps; with prob. `dropout` a row gets the null condition."""
    batch = latents.shape[0]
    scheduler = generator.backend.train_scheduler
    noise = torch.randn(latents.shape, generator=rng).to(latents.device)
    t = torch.randint(0, len(scheduler.alphas_cumprod), (batch,), generator=rng).to(latents.device)
    dropped = (torch.rand(batch, generator=rng) < dropout).to(latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    eps = generator.backend.predict_noise(x_t, t, cond.where_dropped(dropped))
    return torch.nn.functional.mse_loss(eps, noise)


@torch.no_grad()
def encode_all(generator: LatentDiffusionGenerator, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    generator.backend.autoencoder.eval()
    return torch.cat([generator.backend.encode(images[i:i + batch_size].to(generator.device))
                      for i in range(0, len(images), batch_size)])


def index_batch(cond: ConditionBatch, idx: torch.Tensor) -> ConditionBatch:
    return ConditionBatch(cond.labels[idx], None if cond.mask is None else cond.mask[idx])


# --- the loop --------------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path
    state: TrainingState
    steps_this_run: int
    interrupted: bool


def save_checkpoint(generator: LatentDiffusionGenerator, out: Path, state: TrainingState,
                    optimizer: torch.optim.Optimizer | None) -> None:
    info = {"training": {"stage": state.stage, "step": state.step, "complete": state.stage == "complete",
                         "seconds": round(state.seconds, 1),
                         "final_loss": state.history[-1]["loss"] if state.history else None}}
    with atomic_folder(out) as scratch:
        generator.save(scratch, info=info)
        (scratch / STATE_DIR).mkdir()
        write_json(scratch / STATE_DIR / "state.json", state.to_json())
        if optimizer is not None:
            save_optimizer(optimizer, scratch / STATE_DIR)


def start_or_resume(config: GeneratorConfig, data: TrainingData, shape, out: Path, seed: int, device: str):
    recover_interrupted_save(out)
    key = run_key(config, seed, data.conditions)
    if out.exists():
        state_file = out / STATE_DIR / "state.json"
        if not (out / GENERATOR_FILE).is_file() or not state_file.is_file():
            raise AuditInputError(out, "exists and is not a resumable training checkpoint; choose another --out")
        saved = read_json(state_file)
        if saved.get("run_key") != key:
            raise AuditInputError(out, "holds a training run with another config, seed or data; "
                                       "choose another --out (or delete it to start over)")
        state = TrainingState(key, saved["stage"], int(saved["step"]), list(saved["history"]), float(saved["seconds"]))
        if state.stage == "complete" and state.step < config.unet.steps:
            state.stage = "diffusion"  # a longer diffusion stage was asked for: continue it
        generator = LatentDiffusionGenerator.load(out, device)
        generator.config = config  # the same run; only the step count or the checkpoint cadence may differ
        return generator, state
    fields = config.conditioning.fields if config.conditioning.fields is not None else auto_fields(data.conditions)
    vocabulary = LabelVocabulary.build(data.conditions, fields)
    with torch.random.fork_rng(devices=[]):  # initial weights from the run's seed, not from global state
        torch.manual_seed(image_seed(seed, -1 % (1 << 62)))
        generator = LatentDiffusionGenerator.create(config, shape, vocabulary, data.conditions, device)
    return generator, TrainingState(key)


def train(config: GeneratorConfig, data: TrainingData, out: str | Path, seed: int = 0, device: str = "cpu",
          progress: bool = True, max_steps: int | None = None, data_name: str | None = None) -> TrainResult:
    """Train (or resume) into checkpoint folder `out`. `max_steps` stops this call early (after a checkpoint):
    the next call resumes where it stopped."""
    from audit.progress import progress_bar

    out = Path(out)
    shape = tuple(data.images.shape[2:])
    generator, state = start_or_resume(config, data, shape, out, seed, device)
    if data_name:
        generator.info["data"] = data_name
    ae_cfg, un_cfg, tr_cfg = config.autoencoder, config.unet, config.training
    total = ae_cfg.steps + un_cfg.steps
    done = state.step if state.stage == "autoencoder" else ae_cfg.steps + (state.step if state.stage == "diffusion" else un_cfg.steps)
    bar = progress_bar(total=total, desc="train generator", initial=done) if progress else None
    steps_run, started, interrupted = 0, time.perf_counter(), False
    images = data.images.to(device)

    def budget_left() -> bool:
        return max_steps is None or steps_run < max_steps

    def run_stage(stage: str, stage_steps: int, batch_size: int, pool_size: int, optimizer, loss_of) -> None:
        """Optimisation steps of one stage until its step count or this call's budget; each step's batch and
        noise come from (seed, stage, step) alone, so a resumed run takes exactly the steps an uninterrupted one
        would."""
        nonlocal steps_run, started
        running: list[float] = []
        while state.step < stage_steps and budget_left():
            rng = step_generator(seed, stage, state.step)
            idx = torch.randint(0, pool_size, (batch_size,), generator=rng)
            loss = loss_of(idx, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            steps_run += 1
            running.append(loss.item())
            _log(state, running, tr_cfg.log_every, bar)
            if state.step % tr_cfg.checkpoint_every == 0 and state.step < stage_steps:
                _save(generator, out, state, optimizer, started)
                started = time.perf_counter()

    optimizer = None
    try:
        if state.stage == "autoencoder":
            modules = [generator.backend.autoencoder]
            optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=ae_cfg.lr)
            if state.step > 0:
                load_optimizer(optimizer, out / STATE_DIR)
            generator.backend.autoencoder.train()
            run_stage("autoencoder", ae_cfg.steps, ae_cfg.batch_size, len(images), optimizer,
                      lambda idx, rng: generator.backend.autoencoder_loss(images[idx], rng))
            generator.backend.autoencoder.eval()
            if state.step >= ae_cfg.steps:
                # the latent scale makes the latents unit-variance, which the noise schedule assumes
                latents = encode_all(generator, images)
                generator.latent_scale = float(1.0 / latents.std().clamp_min(1e-6))
                state.stage, state.step, optimizer = "diffusion", 0, None
            _save(generator, out, state, optimizer, started)
            started = time.perf_counter()

        if state.stage == "diffusion" and budget_left():
            latents = encode_all(generator, images) * generator.latent_scale
            cond_all = generator.encode_conditions(data.conditions)
            params = [p for m in generator.backend.diffusion_modules for p in m.parameters()]
            optimizer = torch.optim.AdamW(params, lr=un_cfg.lr)
            if state.step > 0:
                load_optimizer(optimizer, out / STATE_DIR)
            for m in generator.backend.diffusion_modules:
                m.train()
            run_stage("diffusion", un_cfg.steps, un_cfg.batch_size, len(latents), optimizer,
                      lambda idx, rng: diffusion_loss(generator, latents[idx], index_batch(cond_all, idx), rng,
                                                      config.conditioning.dropout))
            for m in generator.backend.diffusion_modules:
                m.eval()
            if state.step >= un_cfg.steps:
                state.stage = "complete"  # step stays: a later call with more steps continues from here
            _save(generator, out, state, optimizer, started)
    except KeyboardInterrupt:
        interrupted = True
        _save(generator, out, state, optimizer, started)  # the steps done so far are not lost
        raise
    finally:
        if bar is not None:
            bar.close()
    return TrainResult(out, state, steps_run, interrupted)


def _log(state: TrainingState, running: list[float], every: int, bar) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(stage=state.stage, loss=f"{running[-1]:.4f}", refresh=False)
    if state.step % every == 0:
        state.history.append({"stage": state.stage, "step": state.step, "loss": float(np.mean(running[-every:]))})
        running.clear()


def _save(generator, out, state, optimizer, started) -> None:
    state.seconds += time.perf_counter() - started
    save_checkpoint(generator, out, state, optimizer)


def train_from_dataset(config: GeneratorConfig, dataset: ImageDataset, out: str | Path, seed: int = 0,
                       device: str = "cpu", progress: bool = True, max_steps: int | None = None) -> TrainResult:
    if config.shape is not None and tuple(config.shape) != tuple(dataset.shape):
        raise AuditInputError(None, f"generator preset expects shape {tuple(config.shape)}, "
                                    f"dataset '{dataset.name}' gives {tuple(dataset.shape)}")
    if (config.kind == "ldm2d") != (dataset.ndim == 2):
        raise AuditInputError(None, f"a {config.kind} generator cannot train on the {dataset.ndim}D dataset "
                                    f"'{dataset.name}'")
    records = select_training_records(dataset, config, seed)
    return train(config, load_training_data(dataset, records), out, seed, device, progress, max_steps, dataset.name)
