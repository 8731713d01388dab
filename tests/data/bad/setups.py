"""Cases whose inputs are made at test time (a library writes them, or they would be large to store)."""

from __future__ import annotations

from pathlib import Path


def pipeline_without_weights(case: Path) -> None:
    """A diffusers DDPM pipeline folder (model_index.json, configs) whose UNet weights file is gone."""
    from tests.malicious import write_tiny_pipeline

    pipe = write_tiny_pipeline(case / "pipe")
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def deepssim_checkpoint_2d(case: Path) -> None:
    """A DeepSSIM checkpoint trained (1 epoch) on the case's 16×16 images in `small/`."""
    from tests.cli_harness import run_cli

    result = run_cli(["deepssim", "train", "--train-folder", case / "small", "--shape", "16x16", "--epochs", "1",
                      "--batch-size", "4", "--out", case / "ckpt"])
    assert result.code == 0, result.stderr


def tiny_ldm_checkpoint(case: Path) -> None:
    """A synth-audit LDM checkpoint of 16×16 images (1 training step on 8 random images) in `ckpt/`."""
    from tests.cli_harness import run_cli_one_thread, tiny_training_setup

    train = tiny_training_setup(case / "train", n_images=8, side=16, steps=1)
    train[train.index("--out") + 1] = str(case / "ckpt")
    run_cli_one_thread(train)
