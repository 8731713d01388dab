"""`audit deepssim train`: train the DeepSSIM encoder on real training images and write a checkpoint folder.

    audit deepssim train --data NAME [--data-root DIR] --out CKPT [--epochs E] [--seed S] [--device cpu]
    audit deepssim train --train-folder DIR [--shape 128x128] --out CKPT ...

The last line printed is the held-out Spearman rank correlation between the embedding cosine and the exact
SSIM, on augmented pairs of images (of patients, for presets) kept out of training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from audit.errors import EXIT_OK, AuditInputError

DEFAULT_FOLDER_SHAPE = {2: (128, 128), 3: (32, 32, 32)}


def register(subparsers: argparse._SubParsersAction) -> None:
    from audit.commands.common import add_debug

    family = subparsers.add_parser("deepssim", help="DeepSSIM: an embedding whose cosine approximates SSIM")
    actions = family.add_subparsers(dest="deepssim_action", metavar="ACTION")
    actions.required = True
    train = actions.add_parser("train", help="train a DeepSSIM checkpoint on real training images")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="NAME", help="dataset preset (phantom-mammo, phantom-brain3d, vindr) "
                                                       "or a YAML file")
    source.add_argument("--train-folder", metavar="DIR", help="a plain folder of images (any accepted format)")
    train.add_argument("--data-root", metavar="DIR", help="folder holding the dataset (overrides the preset's root)")
    train.add_argument("--cache-dir", metavar="DIR",
                       help="preprocessing cache (default: $SYNTH_AUDIT_CACHE or ~/.cache/synth-audit)")
    train.add_argument("--split", default="train", help="split of the preset to train on (default: train; "
                                                        "all images when the dataset has no such split)")
    train.add_argument("--shape", metavar="HxW", help="--train-folder: resample images to this shape "
                                                      "(default 128x128, or 32x32x32 for volumes)")
    train.add_argument("--out", required=True, metavar="CKPT", help="checkpoint folder to write")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--backbone", default="small-cnn", help="small-cnn (default) or timm:<model> (2D)")
    train.add_argument("--input-normalisation", choices=("zscore", "fixed"), default="zscore",
                       help="network input: z-scored per image (default, as DeepSSIM) or a fixed map of [0, 1]")
    train.add_argument("--weights", metavar="PATH", help="timm backbone: local safetensors weights to start from")
    train.add_argument("--heldout-fraction", type=float, default=0.1,
                       help="share of images (patients) kept out of training for the Spearman check")
    add_debug(train)
    train.set_defaults(func=run_train)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise AuditInputError(None, f"--shape: expected e.g. 128x128 or 32x32x32, got '{text}'") from None
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise AuditInputError(None, f"--shape: 2 or 3 sides of at least 8 pixels, got '{text}'")
    return shape


def validate_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before reading a single image."""
    if args.epochs < 1:
        raise AuditInputError(None, f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 2:
        raise AuditInputError(None, f"--batch-size must be >= 2, got {args.batch_size}")
    if not 0 <= args.heldout_fraction < 1:
        raise AuditInputError(None, f"--heldout-fraction must be in [0, 1), got {args.heldout_fraction}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise AuditInputError(None, f"--device: cpu or cuda, got '{args.device}'")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise AuditInputError(None, "--device cuda: no CUDA device is available")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise AuditInputError(out, "--out exists and is not a checkpoint folder (refusing to write into it)")
    if args.backbone != "small-cnn" and not args.backbone.startswith("timm:"):
        raise AuditInputError(None, f"--backbone: small-cnn or timm:<model>, got '{args.backbone}'")
    if args.weights and not args.backbone.startswith("timm:"):
        raise AuditInputError(None, "--weights is for a timm backbone (--backbone timm:<model>)")


def load_training_images(args: argparse.Namespace) -> tuple[np.ndarray, list[str], str]:
    """(images, patient ids for the held-out split, a description of the source)."""
    from audit.data.dataset import open_dataset

    if args.train_folder:
        from audit.data.imageio import read_image
        from audit.data.readers.folder import open_folder, scan_folder

        records, _ = scan_folder(args.train_folder)
        if args.shape:
            shape = parse_shape(args.shape)
        else:
            shape = DEFAULT_FOLDER_SHAPE.get(read_image(records[0].path).ndim)
            if shape is None:
                raise AuditInputError(records[0].path, "neither a 2D image nor a 3D volume")
        dataset = open_folder(args.train_folder, shape=shape)
        source = f"folder {args.train_folder}"
    else:
        from audit.commands.common import data_config_from_args

        dataset = open_dataset(data_config_from_args(args))
        if any(r.split == args.split for r in dataset.records):
            dataset = dataset.subset(split=args.split)
        source = f"dataset {dataset.name} ({args.split} split)"
    images = dataset.stack(progress="reading images")
    return images, [r.patient_id for r in dataset.records], source


def run_train(args: argparse.Namespace) -> int:
    from attacks.replicas.deepssim import default_config, save_deepssim, train_deepssim

    validate_args(args)
    images, groups, source = load_training_images(args)
    if len(images) < 4:
        raise AuditInputError(None, f"{source}: {len(images)} images; DeepSSIM training needs at least 4")
    config = default_config(images.shape[1:], backbone=args.backbone, input_normalisation=args.input_normalisation)
    backbone_state = None
    if args.weights:
        backbone_state = _timm_backbone_state(args.backbone.partition(":")[2], args.weights)
    model, report = train_deepssim(images, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                                   heldout_fraction=args.heldout_fraction, groups=groups, config=config,
                                   device=args.device, progress=True, backbone_state=backbone_state)
    save_deepssim(model, args.out)
    losses = report.epoch_losses
    print(f"trained DeepSSIM on {report.train_images} images of {source}, shape {tuple(images.shape[1:])}, "
          f"{args.epochs} epochs in {report.seconds:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
          f"checkpoint: {args.out}")
    if report.heldout_spearman is None:
        print("held-out Spearman(cosine, SSIM): n/a (no held-out images)")
    else:
        print(f"held-out Spearman(cosine, SSIM) = {report.heldout_spearman:.3f}, mean |cosine - SSIM| = "
              f"{report.heldout_mae:.3f}, on {report.heldout_pairs} pairs from {report.heldout_images} held-out images")
    return EXIT_OK


def _timm_backbone_state(model_name: str, weights: str):
    """Local safetensors weights adapted to the 1-channel headless timm model DeepSSIM builds."""
    import timm

    from audit.checkpoints import load_safetensors_file
    from audit.features import adapt_state_to_model

    if not Path(weights).is_file():
        raise AuditInputError(weights, f"weights for timm backbone '{model_name}' not found; put a safetensors file "
                                       f"of that model there (nothing is downloaded)")
    model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=0)
    return adapt_state_to_model(load_safetensors_file(weights), model)
