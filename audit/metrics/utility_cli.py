"""`audit score utility`: train a classifier on synthetic images, test it on real ones, against real training.

    audit score utility --data NAME [--data-root DIR] (--model CKPT | --synthetic DIR) [--target NAME] --out DIR
                        [--holdout-root DIR] [--n N] [--mixed] [--steps N] [--classifier NAME] [--weights PATH]
                        [--seed S] [--device cpu] [--threads N] [--batch-size B] [--n-boot N]

With `--model`, N images are generated into OUT/synthetic from the generator's default conditions (the training
set's label distribution). Writes OUT/utility.json (`tstr_auc`, `trtr_auc`, `gap`, `mixed_auc`: Estimates at
the top level, then sets, recipe and training logs) and OUT/roc.png. Bad input — labels missing for the target,
an unknown target, a set holding one class only — is one line and exit code 2, checked before any training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.commands.common import add_data_options, data_config_from_args
from audit.errors import EXIT_OK, AuditInputError

DEFAULT_MAX_GENERATED = 256  # --n default: as many as the labelled real training images, at most this


def register(subparsers) -> None:
    from audit.utility.classifiers import CLASSIFIERS
    from audit.utility.targets import TARGETS

    p = subparsers.add_parser(
        "utility", help="train-on-synthetic-test-on-real (TSTR) vs train-on-real (TRTR), ROC-AUC with CIs",
        description="Train one classifier recipe on the synthetic images (TSTR), on the real training images "
                    "(TRTR) and optionally on both (mixed); test each on held-out real images; report ROC-AUCs "
                    "with bootstrap intervals over test patients and the gap TRTR - TSTR.")
    add_data_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="CKPT", help="generator to sample the synthetic set from")
    source.add_argument("--synthetic", metavar="DIR",
                        help="folder of synthetic images with a manifest.csv of their conditions (audit generate)")
    p.add_argument("--target", default="auto",
                   help=f"what to predict: {', '.join(TARGETS.names())}, finding:<category>, label:<column> "
                        "(default auto: malignancy with BI-RADS labels, lesion with a 'lesion' column)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--holdout-root", metavar="DIR",
                   help="a second folder of the same dataset preset whose images (every split) are the real test "
                        "set, e.g. new phantom patients (default: the test split of --data-root)")
    p.add_argument("--n", type=int, help="with --model: images to generate (default: as many as the labelled "
                                          f"real training images, at most {DEFAULT_MAX_GENERATED}; a folder "
                                          "model: at most its images)")
    p.add_argument("--mixed", action="store_true", help="also train on real + synthetic images together")
    p.add_argument("--steps", type=int, help="training budget in optimizer steps, every arm (default 300)")
    p.add_argument("--classifier", default="auto",
                   help=f"network: {', '.join(CLASSIFIERS.names())} (default auto: timm resnet10t in 2D, "
                        "monai_resnet in 3D)")
    p.add_argument("--timm-model", metavar="NAME", help="timm backbone of the timm classifier (default resnet10t)")
    p.add_argument("--weights", metavar="PATH", help="local safetensors weights of the timm backbone "
                                                     "(default: trained from scratch)")
    p.add_argument("--seed", type=int, default=0, help="seed of generation and of every training run")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (1 is fastest on a busy machine)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch when predicting and generating")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of test patients (default 1000)")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------------------------


def _recipe(args):
    from audit.utility.training import Recipe

    options = {}
    if args.timm_model:
        options["model"] = args.timm_model
    if args.weights:
        options["weights"] = args.weights
    fields = {"classifier": args.classifier, "classifier_options": options}
    if args.steps is not None:
        fields["steps"] = args.steps
    try:
        return Recipe(**fields)
    except ValueError as err:
        raise AuditInputError(None, f"--steps: {err.errors()[0]['msg']}") from None


def _holdout(args, data_cfg, dataset, train):
    """The real test set: the test split, or every image under --holdout-root (checked patient-disjoint)."""
    from audit.data.dataset import open_dataset

    if not args.holdout_root:
        return dataset.subset("test")
    holdout = open_dataset(data_cfg.model_copy(update={"root": Path(args.holdout_root)}))
    shared = {r.patient_id for r in holdout.records} & {r.patient_id for r in train.records}
    if shared:
        raise AuditInputError(args.holdout_root, f"{len(shared)} patients are also in the training split of "
                                                 "--data-root: a test set must hold new patients")
    return holdout


def _labels_of_condition(condition):
    from audit.data.records import Labels

    return Labels(birads=condition.birads, density=condition.density, findings=tuple(condition.findings),
                  extra=tuple(condition.extra))


def _generate(args, train_set, shape, target):
    """--model: generate into OUT/synthetic; the target's labels are checked on the conditions first."""
    from generators.loading import load_generator
    from generators.writer import conditions_for, generate_to_folder

    generator = load_generator(args.model, device=args.device)
    n = args.n
    if n is None:  # a folder model holds a fixed number of images: use them all, up to the default
        n = min(len(train_set), DEFAULT_MAX_GENERATED, getattr(generator, "__len__", lambda: 1 << 62)())
    if n < 2:
        raise AuditInputError(None, "--n must be at least 2")
    conditions = conditions_for(generator, n, args.seed, None)
    labels = [target.label_of(_labels_of_condition(c)) for c in conditions]
    known = {v for v in labels if v is not None}
    if not known:
        raise AuditInputError(args.model, f"the model's conditions carry no '{target.reads}' labels for target "
                                          f"'{target.name}' (a folder of images without a manifest?)")
    if len(known) < 2:
        raise AuditInputError(args.model, f"the {n} conditions to generate hold only class "
                                          f"'{target.classes[known.pop()]}' of target '{target.name}'; raise --n")
    out = Path(args.out) / "synthetic"
    generate_to_folder(generator, out, n, seed=args.seed, batch_size=min(args.batch_size, 16), progress=True)
    return out


def run(args: argparse.Namespace) -> int:
    from audit.artifacts import ArtifactCache
    from audit.data.dataset import open_dataset
    from audit.data.readers.folder import open_folder
    from audit.jsonio import write_json_atomic
    from audit.metrics.utility import evaluate_utility, require_utility_sets
    from audit.registry import Runtime
    from audit.utility.classifiers import make_classifier
    from audit.utility.data import labelled_set
    from audit.utility.plots import plot_roc
    from audit.utility.targets import default_target_name, make_target

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.n_boot < 10:
        raise AuditInputError(None, "--batch-size must be at least 1 and --n-boot at least 10")
    recipe = _recipe(args)
    data_cfg = data_config_from_args(args)
    dataset = open_dataset(data_cfg)
    train = dataset.subset("train")
    if len(train) == 0:
        raise AuditInputError(data_cfg.root, "the dataset has no training split")
    holdout = _holdout(args, data_cfg, dataset, train)
    target_name = args.target if args.target != "auto" else default_target_name(train.records)
    if target_name is None:
        raise AuditInputError(None, "--target: no default for these labels (no BI-RADS, no 'lesion' column); "
                                    "name one, e.g. label:<column>")
    target = make_target(target_name)
    shape = tuple(train.shape)
    classifier = make_classifier(recipe.classifier, recipe.classifier_options, len(shape))
    train_set, test_set = labelled_set(train, target, "trtr"), labelled_set(holdout, target, "test")
    require_utility_sets(target, {"train": train_set, "test": test_set}, args.data_root or data_cfg.root)

    synthetic_dir = Path(args.synthetic) if args.synthetic else _generate(args, train_set, shape, target)
    synthetic = open_folder(synthetic_dir, shape=shape)
    synthetic_set = labelled_set(synthetic, target, "tstr")
    require_utility_sets(target, {"synthetic": synthetic_set}, synthetic_dir)

    runtime = Runtime(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=True)
    cache = ArtifactCache(data_cfg.cache_dir)
    result = evaluate_utility(target, train_set, test_set, synthetic_set, recipe, classifier, shape, runtime,
                              cache=cache, mixed=args.mixed, n_boot=args.n_boot)
    out = Path(args.out)
    write_json_atomic(out / "utility.json", result.to_json())
    plot_roc(out / "roc.png", test_set.y, result.probabilities, target.classes, result.figures,
             f"utility: {target.name}")
    for name in ("trtr_auc", "tstr_auc", "mixed_auc", "gap"):
        if name in result.figures:
            e = result.figures[name]
            print(f"{name:>9}: {e.value:.3f} (95% CI {e.ci_low:.3f} to {e.ci_high:.3f})")
    cached = " (TRTR from cache)" if result.trtr_from_cache else ""
    print(f"utility of target '{target.name}': {len(test_set)} real test images of "
          f"{len(set(test_set.patients.tolist()))} patients; trained on {len(train_set)} real / "
          f"{len(synthetic_set)} synthetic images{cached}; wrote {out / 'utility.json'}")
    return EXIT_OK
