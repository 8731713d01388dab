"""`audit score fidelity`: FID / KID / precision-recall / density-coverage of a synthetic set under a named
feature extractor. The folder form is a fixed contract other tools call:

    audit score fidelity --real DIR --synthetic DIR [--holdout DIR] [--extractor NAME] [--weights PATH] --out DIR
    audit score fidelity --data NAME [--data-root DIR] (--model CKPT | --synthetic DIR) [--n N]
                         [--extractor NAME] [--weights PATH] --out DIR

Both write OUT/fidelity.json — top level `extractor` (name, weights SHA-256, parameters) and `fid`, `kid`,
`precision`, `recall`, `density`, `coverage`, each an Estimate (`value`, `ci_low`, `ci_high`, `n`, ...) with both
set sizes — and OUT/pca.png. With held-out real images (`--holdout`, or the dataset's test split) also the real
floor (held-out vs training) and `fid_over_floor`. With `--model`, N images are generated into OUT/synthetic first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.errors import EXIT_OK, AuditInputError

DEFAULT_GENERATED = 64  # images generated with --model: CPU-sized (the phantom test split is 64 images)


def register(subparsers) -> None:
    from audit.commands.common import add_debug
    from audit.extractors import DEFAULT_EXTRACTOR, extractor_spec_names
    from audit.parallel import add_executor_options

    p = subparsers.add_parser(
        "fidelity", help="FID/KID/precision-recall/density-coverage of synthetic vs real images",
        description="Score how close a synthetic image set is to the real one under a named feature extractor. "
                    "Folder form: --real DIR --synthetic DIR [--holdout DIR]. Dataset form: --data NAME "
                    "(--model CKPT | --synthetic DIR); the real reference is the training split, the held-out "
                    "floor the test split.")
    source = p.add_argument_group("folders")
    source.add_argument("--real", metavar="DIR", help="folder of real reference images (folder form)")
    source.add_argument("--holdout", metavar="DIR", help="folder of held-out real images: the real floor (optional)")
    source.add_argument("--synthetic", metavar="DIR", help="folder of synthetic images")
    data = p.add_argument_group("dataset")
    data.add_argument("--data", metavar="NAME", help="dataset preset or YAML (dataset form)")
    data.add_argument("--data-root", metavar="DIR", help="folder holding the dataset")
    data.add_argument("--model", metavar="CKPT", help="generator to sample the synthetic set from (dataset form)")
    data.add_argument("--n", type=int, default=DEFAULT_GENERATED,
                      help="images to generate with --model (default %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="generation and bootstrap seed (default %(default)s)")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                   help=f"feature extractor: {', '.join(extractor_spec_names())} (default %(default)s)")
    p.add_argument("--weights", metavar="PATH", help="the extractor's weights (inception: the .pth/.safetensors "
                                                     "file; timm: safetensors; domain: a saved encoder folder)")
    p.add_argument("--extractor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an extractor parameter, e.g. slices_per_plane=3 (repeatable)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per interval (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--cache-dir", metavar="DIR", help="cache (default: $SYNTH_AUDIT_CACHE or ~/.cache/synth-audit)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="images per feature batch (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (1 is fastest on a busy machine)")
    add_executor_options(p)
    add_debug(p)
    p.set_defaults(func=run)


def parse_extractor_options(items: list[str]) -> dict:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AuditInputError(None, f"--extractor-option: expected KEY=VALUE, got '{item}'")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise AuditInputError(None, f"--extractor-option: cannot read the value of '{item}'") from None
    return options


def _check_form(args: argparse.Namespace) -> None:
    if (args.real is None) == (args.data is None):
        raise AuditInputError(None, "give either --real DIR (folder form) or --data NAME (dataset form)")
    if args.real is not None:
        if args.synthetic is None:
            raise AuditInputError(None, "--real needs --synthetic DIR")
        if args.model is not None or args.data_root is not None:
            raise AuditInputError(None, "--model and --data-root belong to the dataset form (--data NAME)")
    elif (args.model is None) == (args.synthetic is None):
        raise AuditInputError(None, "--data needs exactly one of --model CKPT and --synthetic DIR")
    if args.n < 1 or args.n_boot < 0 or args.batch_size < 1:
        raise AuditInputError(None, "--n and --batch-size must be at least 1, --n-boot at least 0")


def _inputs(args: argparse.Namespace, out: Path, executor=None):
    from audit.data.readers.folder import open_folder
    from audit.stages import StageInputs

    if args.real is not None:
        real = open_folder(args.real, name="real")
        holdout = open_folder(args.holdout, shape=real.shape, name="holdout") if args.holdout else None
        synthetic = open_folder(args.synthetic, shape=real.shape, name="synthetic")
        return StageInputs(data_config=None, train=real, holdout=holdout, synthetic=synthetic)

    from audit.commands.common import data_config_from_args
    from audit.data.dataset import open_dataset

    config = data_config_from_args(args)
    dataset = open_dataset(config)
    train = dataset.subset("train")
    if len(train) == 0:
        raise AuditInputError(config.root, "the dataset has no training split (the real reference)")
    test = dataset.subset("test")
    synthetic_dir = args.synthetic
    if args.model is not None:
        from generators.loading import load_generator
        from generators.writer import GeneratorSource, generate_to_folder

        synthetic_dir = out / "synthetic"
        generate_to_folder(load_generator(args.model, device=args.device), synthetic_dir, args.n, seed=args.seed,
                           batch_size=min(args.batch_size, 8), progress=True, executor=executor,
                           source=GeneratorSource(str(args.model), args.device))
    synthetic = open_folder(synthetic_dir, shape=train.shape, name="synthetic")
    return StageInputs(data_config=config, train=train, holdout=test if len(test) else None, synthetic=synthetic)


def run(args: argparse.Namespace) -> int:
    from audit.artifacts import ArtifactCache
    from audit.metrics.fidelity_stage import FidelityStage
    from audit.progress import progress_enabled
    from audit.registry import Runtime
    from audit.stages import StageContext

    from audit.parallel import executor_from_args

    _check_form(args)
    executor = executor_from_args(args)  # a missing Ray is an error before any work
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy's BLAS too (the bootstrap's eigen/singular value problems)
    out = Path(args.out)
    runtime = Runtime(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=progress_enabled(),
                      cache_dir=Path(args.cache_dir) if args.cache_dir else None, executor=executor)
    stage = FidelityStage(FidelityStage.Params(extractor=args.extractor, weights=args.weights,
                                               extractor_options=parse_extractor_options(args.extractor_option),
                                               n_boot=args.n_boot, seed=args.seed), runtime)
    stage.extractor()  # weights and options are checked before any image is read or generated
    inputs = _inputs(args, out, executor)
    stage.requirements(inputs)
    output = stage.run(inputs, StageContext(out_dir=out, runtime=runtime, cache=ArtifactCache(runtime.cache_dir)))
    print(summary_line(output))
    print(f"wrote {out / 'fidelity.json'}" + (f" and {out / 'pca.png'}" if "pca" in output.artefacts else ""))
    return EXIT_OK


def summary_line(output) -> str:
    f = output.figures
    extractor = output.details["extractor"]
    parts = [f"fidelity ({extractor['name']}, n synthetic {output.details['n_synthetic']} vs real "
             f"{output.details['n_real']}):"]
    for name in ("fid", "kid", "precision", "recall", "density", "coverage"):
        e = f[name]
        parts.append(f"{name} {e.value:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]")
    if "fid_over_floor" in f:
        e = f["fid_over_floor"]
        parts.append(f"fid/floor {e.value:.3g} [{e.ci_low:.3g}, {e.ci_high:.3g}]")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])
