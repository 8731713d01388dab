"""`audit replicas`: replica detection between folders. This command line is a fixed contract other tools call:

    audit replicas --train DIR --holdout DIR --synthetic DIR --out DIR
                   [--scorers LIST | --preset default|fast] [--option SCORER.KEY=VALUE ...]
                   [--encoder NAME --weights PATH] [--deepssim CKPT] [--labels CSV] [--quantile Q] [--gate G]
                   [--device cpu] [--batch-size B] [--seed S]
                   [--ray-address ADDR|auto|local [--ray-cpus-per-actor N] [--ray-gpus-per-actor N] [--ray-actors N]]

Writes OUT/replicas.csv (synthetic,nearest_train,score,is_replica, then one column per scorer),
OUT/replicas.json, OUT/pairs.png and OUT/histograms.png. Exit code 1 when the flagged share is significantly
above the gate (its Wilson 95% lower bound exceeds --gate), 0 otherwise, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys

from attacks.replicas.base import DEFAULT_QUANTILE
from attacks.replicas.pipeline import DEFAULT_GATE
from attacks.replicas.registry import PRESETS, known_scorers
from audit.errors import EXIT_FAIL, EXIT_OK
from audit.parallel import add_executor_options




def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replicas", help="flag synthetic images that copy training images (calibrated on held-out images)",
        description="Score every synthetic image by its similarity to the nearest training image, calibrate a "
                    "threshold on held-out real images (no labels needed), and write replicas.csv / .json and "
                    "figures. Exit code 1 when the flagged share is significantly above --gate.")
    p.add_argument("--train", required=True, help="folder of the generator's training images")
    p.add_argument("--holdout", required=True, help="folder of real images the generator never saw (the null)")
    p.add_argument("--synthetic", required=True, help="folder of generated images to audit")
    p.add_argument("--out", required=True, help="output folder")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--scorers", default=None,
                        help=f"comma-separated scorers (known: {', '.join(known_scorers())}); default: the "
                             f"'default' preset")
    chosen.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="; ".join(f"{name}: {','.join(names)}" for name, names in PRESETS.items()))
    p.add_argument("--option", action="append", default=[], metavar="SCORER.KEY=VALUE",
                   help="a declared parameter of a listed scorer, e.g. ncc_reg.max_angle=20 (repeatable; values "
                        "read as YAML scalars or lists)")
    p.add_argument("--encoder", default=None, metavar="NAME",
                   help="feature-level encoder: ssl or timm:<model> (adds the 'feature' scorer if not listed)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="encoder weights: an SSL checkpoint folder or a timm safetensors file (local; nothing is "
                        "downloaded)")
    p.add_argument("--deepssim", default=None, metavar="CKPT",
                   help="DeepSSIM checkpoint folder (from `audit deepssim train`; adds the 'deepssim' scorer)")
    p.add_argument("--labels", default=None, help="expert labels CSV with columns file,is_replica")
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                   help="holdout quantile used as threshold (default %(default)s)")
    p.add_argument("--gate", type=float, default=DEFAULT_GATE,
                   help="exit 1 when the flagged share's Wilson 95%% lower bound exceeds this (default "
                        "%(default)s: above the 1-3%% of new images the calibrated threshold lets through)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of learned scorers trained at fit")
    add_executor_options(p)  # scoring of the holdout and synthetic images on Ray actors (audit.parallel)
    p.set_defaults(func=run)


def scorers_and_options(args: argparse.Namespace) -> tuple[list[str], dict[str, dict], str | None]:
    """The scorer list (--scorers, or a preset), with --encoder/--weights/--deepssim folded into the options of
    the scorer they configure (which is added when not listed)."""
    from attacks.replicas.registry import parse_option_assignments, parse_scorer_list, preset_scorers
    from audit.errors import AuditInputError

    preset = None if args.scorers else (args.preset or "default")
    names = parse_scorer_list(args.scorers) if args.scorers else preset_scorers(preset)
    options = parse_option_assignments(args.option)
    if args.weights is not None and args.encoder is None:
        raise AuditInputError(None, "--weights belongs to --encoder (give the encoder it is for)")
    if args.encoder is not None:
        options.setdefault("feature", {}).update({"encoder": args.encoder, "weights": args.weights})
        names += [] if "feature" in names else ["feature"]
    if args.deepssim is not None:
        options.setdefault("deepssim", {})["checkpoint"] = args.deepssim
        names += [] if "deepssim" in names else ["deepssim"]
    return names, options, preset


def run(args: argparse.Namespace) -> int:
    from attacks.replicas.pipeline import run_folder_audit
    from audit.parallel import executor_from_args
    from audit.registry import Runtime

    names, options, preset = scorers_and_options(args)
    runtime = Runtime(device=args.device, batch_size=args.batch_size, seed=args.seed,
                      executor=executor_from_args(args))
    summary = run_folder_audit(args.train, args.holdout, args.synthetic, args.out, names, quantile=args.quantile,
                               labels_csv=args.labels, options=options, runtime=runtime, gate=args.gate,
                               preset=preset)
    flagged = summary["flagged"]
    print(f"replicas: {flagged['value'] * 100:.1f}% of {flagged['n']} synthetic images flagged "
          f"(95% CI {flagged['ci_low'] * 100:.1f}-{flagged['ci_high'] * 100:.1f}%), threshold = holdout "
          f"q{args.quantile}, scorers {','.join(names)}; wrote {args.out}/replicas.csv")
    crossfit = summary.get("holdout_flagged_crossfit")
    if crossfit:
        print(f"held-out real images flagged by the same rule (cross-fitted on holdout halves): "
              f"{crossfit['value'] * 100:.1f}% (95% CI {crossfit['ci_low'] * 100:.1f}-{crossfit['ci_high'] * 100:.1f}%)")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if summary["gate"]["exceeded"]:
        print(f"FAIL: the flagged share's lower bound {flagged['ci_low'] * 100:.1f}% exceeds the gate "
              f"{args.gate * 100:.1f}%")
        return EXIT_FAIL
    return EXIT_OK
