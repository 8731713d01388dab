"""`audit attack reid`: can a synthetic image be linked back to a training patient?

Folder contract (fixed, other tools call it):

    audit attack reid --train DIR --holdout DIR --synthetic DIR --out DIR

`--train` / `--holdout` are image folders whose `manifest.csv` has `file,patient_id` (held-out patients must not
be training patients). Writes OUT/reid.csv (synthetic,nearest_train,nearest_patient,score,is_linked) and
OUT/reid.json, plus gallery.png and scores.png. Dataset mode:

    audit attack reid --data NAME [--data-root DIR] (--model CKPT | --synthetic DIR) [--n N] --out DIR

(train = the dataset's train split, held-out = its test split; with --model, N images are generated into
OUT/synthetic first). A trained attacker is cached per training set and parameters; `audit attack reid train`
saves one as a checkpoint folder, which `--attacker CKPT` reuses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit.commands.common import add_data_options, data_config_from_args
from audit.parallel import add_executor_options, executor_from_args
from audit.errors import EXIT_OK, AuditInputError

DEFAULT_N = 64


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--option", action="append", default=[], metavar="PART.KEY=VALUE",
                        help="a parameter of the attacker or the evaluation, e.g. attacker.epochs=20, "
                             "attacker.loss=contrastive, attacker.weights=/w/resnet18.safetensors, "
                             "evaluation.n_permutations=200 (repeatable)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding batch (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and resampling (default %(default)s)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (1 is fastest on a busy "
                                                                 "machine)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reid", help="re-identification: link synthetic images to training patients (Siamese attacker)",
        description="Train (or reuse) a patient re-identification network on the training images, check it on "
                    "held-out patients, and measure how many synthetic images it links to a training patient "
                    "against held-out real images as the control. Writes reid.csv, reid.json, gallery.png, "
                    "scores.png.")
    p.add_argument("--train", metavar="DIR", help="folder of training images, manifest.csv with file,patient_id")
    p.add_argument("--holdout", metavar="DIR", help="folder of held-out real images of other patients, "
                                                    "manifest.csv with file,patient_id")
    p.add_argument("--synthetic", metavar="DIR", help="folder of synthetic images (manifest.csv with source_id "
                                                      "adds the mAP@R of source patients)")
    p.add_argument("--model", metavar="CKPT", help="dataset mode: generate --n images from this model first")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="images to generate with --model (default %(default)s)")
    p.add_argument("--attacker", metavar="CKPT", help="a saved attacker (audit attack reid train) instead of the "
                                                      "cached one")
    p.add_argument("--out", metavar="DIR", help="output folder")
    add_data_options(p, required=False)
    _add_runtime_options(p)
    add_executor_options(p)  # --ray-address: the embedding passes on Ray actors
    p.set_defaults(func=run)

    verbs = p.add_subparsers(dest="reid_command", metavar="{train}")
    train = verbs.add_parser("train", help="train the re-identification attacker and save it as a checkpoint",
                             description="Train the attacker on a training folder (manifest with patient_id) or a "
                                         "dataset's train split and save it (safetensors + config.json).")
    train.add_argument("--train", metavar="DIR", help="folder of training images, manifest.csv with file,patient_id")
    add_data_options(train, required=False)
    train.add_argument("--out", required=True, metavar="CKPT", help="checkpoint folder to write")
    _add_runtime_options(train)
    train.set_defaults(func=run_train)


# --------------------------------------------------------------------------------------------------------- helpers


def _setup(args):
    """Threads, runtime and validated stage parameters (before any image is read)."""
    from attacks.reid.stage import ReidStageParams
    from audit.registry import Runtime, format_validation_error, parse_option_assignments
    from pydantic import ValidationError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise AuditInputError(None, f"--batch-size must be >= 1, got {args.batch_size}")
    options = parse_option_assignments(args.option)
    unknown = sorted(set(options) - {"attacker", "evaluation"})
    if unknown:
        raise AuditInputError(None, f"--option: unknown part '{unknown[0]}' (known: attacker, evaluation)")
    try:
        params = ReidStageParams.model_validate(options)
    except ValidationError as err:
        raise AuditInputError(None, f"--option: {format_validation_error(err)}") from None
    runtime = Runtime(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=True,
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None, executor=executor_from_args(args))
    return params, runtime


def open_patient_folder(folder: str, flag: str, shape=None):
    """An image folder whose manifest names each image's patient (the reader would otherwise make every file
    its own patient)."""
    from audit.data.csvio import read_csv_rows
    from audit.data.readers.folder import DEFAULT_MANIFEST, open_folder

    folder_path = Path(folder)
    if not folder_path.is_dir():
        raise AuditInputError(folder, f"{flag} is not a folder")
    manifest = folder_path / DEFAULT_MANIFEST
    if not manifest.is_file():
        raise AuditInputError(manifest, f"{flag} needs a manifest.csv with the columns file,patient_id")
    rows = read_csv_rows(manifest, "manifest")
    if "patient_id" not in rows[0] or any(not (row.get("patient_id") or "").strip() for row in rows):
        raise AuditInputError(manifest, "every row needs a patient_id (column file,patient_id)")
    return open_folder(folder_path, shape=shape, name=flag.lstrip("-"))


def _cache(runtime):
    from audit.artifacts import ArtifactCache

    return ArtifactCache(runtime.cache_dir)


def _check_mode(args) -> str:
    folder_flags = [f for f in ("train", "holdout") if getattr(args, f)]
    if args.data and folder_flags:
        raise AuditInputError(None, f"give either --data (dataset mode) or --train/--holdout (folder mode), "
                                    f"not both (--{folder_flags[0]} with --data)")
    if not args.out:
        raise AuditInputError(None, "--out is required")
    if args.data:
        if bool(args.model) == bool(args.synthetic):
            raise AuditInputError(None, "dataset mode needs exactly one of --model CKPT or --synthetic DIR")
        if args.n < 1:
            raise AuditInputError(None, f"--n must be >= 1, got {args.n}")
        return "dataset"
    missing = [f"--{f}" for f in ("train", "holdout", "synthetic") if not getattr(args, f)]
    if missing:
        raise AuditInputError(None, f"folder mode needs --train, --holdout and --synthetic (missing: "
                                    f"{', '.join(missing)}); or use --data NAME")
    if args.model:
        raise AuditInputError(None, "--model is for dataset mode (--data); in folder mode give --synthetic DIR")
    return "folder"


# --------------------------------------------------------------------------------------------------------- verbs


def run(args: argparse.Namespace) -> int:
    from attacks.reid.stage import display_names, run_reid
    from audit.data.readers.folder import open_folder

    mode = _check_mode(args)
    params, runtime = _setup(args)
    if args.attacker:
        params = params.model_copy(update={"checkpoint": args.attacker})
        from attacks.reid.attacker import read_attacker_meta
        read_attacker_meta(args.attacker)  # a bad checkpoint fails before any image is read
    out = Path(args.out)
    if mode == "folder":
        train = open_patient_folder(args.train, "--train")
        holdout = open_patient_folder(args.holdout, "--holdout", shape=train.shape)
        synthetic = open_folder(args.synthetic, shape=train.shape, name="synthetic")
        names = {"train": display_names(train, args.train), "synthetic": display_names(synthetic, args.synthetic)}
    else:
        from audit.data.dataset import open_dataset

        dataset = open_dataset(data_config_from_args(args))
        train, holdout = dataset.subset("train"), dataset.subset("test")
        for part, split in ((train, "train"), (holdout, "test")):
            if len(part) == 0:
                raise AuditInputError(args.data_root or args.data, f"the dataset has no '{split}' split")
        synthetic_dir = Path(args.synthetic) if args.synthetic else out / "synthetic"
        if args.model:
            from generators.loading import load_generator
            from generators.writer import generate_to_folder

            generator = load_generator(args.model, device=args.device)
            generate_to_folder(generator, synthetic_dir, args.n, seed=args.seed, progress=True)
        synthetic = open_folder(synthetic_dir, shape=train.shape, name="synthetic")
        names = {"train": display_names(train, args.data_root), "synthetic": display_names(synthetic, synthetic_dir)}

    output = run_reid(train, holdout, synthetic, params, runtime, _cache(runtime), out, names=names)
    figures = output.figures
    sanity, rate, control, risk = (figures["sanity/map_at_r"], figures["rate_at_fpr_1pct"],
                                   figures["control/rate_at_fpr_1pct"], figures["risk_at_fpr_1pct"])
    print(f"reid: attacker sanity mAP@R {sanity.value:.3f} on {sanity.n} held-out images; "
          f"{rate.value * 100:.1f}% of {rate.n} synthetic images linked (95% CI {rate.ci_low * 100:.1f}-"
          f"{rate.ci_high * 100:.1f}%) vs control {control.value * 100:.1f}% (1:N false-link rate 1%); "
          f"risk {risk.value:.3f} [{risk.ci_low:.3f}, {risk.ci_high:.3f}]; wrote {out}/reid.csv")
    for warning in output.details["warnings"]:
        print(f"reid: warning: {warning}", file=sys.stderr)
    if figures["map_at_r"].n:
        chance = figures["map_at_r_chance"]
        print(f"reid: source-patient mAP@R {figures['map_at_r'].value:.3f} vs chance {chance.value:.3f} "
              f"[{chance.ci_low:.3f}, {chance.ci_high:.3f}]")
    return EXIT_OK


def run_train(args: argparse.Namespace) -> int:
    from attacks.reid.attacker import save_attacker, train_attacker

    if bool(args.train) == bool(args.data):
        raise AuditInputError(None, "give exactly one of --train DIR or --data NAME")
    params, runtime = _setup(args)
    if args.train:
        train = open_patient_folder(args.train, "--train")
    else:
        from audit.data.dataset import open_dataset

        train = open_dataset(data_config_from_args(args)).subset("train")
        if len(train) == 0:
            raise AuditInputError(args.data_root or args.data, "the dataset has no 'train' split")
    attacker = train_attacker(train, params.attacker, runtime)
    save_attacker(attacker, args.out)
    print(f"reid attacker trained on {attacker.info['n_images']} images of {attacker.info['n_patients']} patients "
          f"in {attacker.info['train_seconds']:.0f} s → {args.out}")
    return EXIT_OK
