"""`audit replicas`: replica detection between folders. This command line is a fixed contract other tools call:

    audit replicas --train DIR --holdout DIR --synthetic DIR --out DIR
                   [--scorers ncc,ssim,feature,segmentation,deepssim] [--labels CSV] [--quantile Q]
                   [--deepssim CKPT] [--device cpu] [--batch-size B]

Writes OUT/replicas.csv (synthetic,nearest_train,score,is_replica, then one column per scorer),
OUT/replicas.json, OUT/pairs.png and OUT/histograms.png.
"""

from __future__ import annotations

import argparse

from attacks.replicas.base import DEFAULT_QUANTILE
from attacks.replicas.registry import DEFAULT_SCORERS, known_scorers, parse_scorer_list
from audit.errors import EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replicas", help="flag synthetic images that copy training images (calibrated on held-out images)",
        description="Score every synthetic image by its similarity to the nearest training image, calibrate a "
                    "threshold on held-out real images (no labels needed), and write replicas.csv / .json and "
                    "figures.")
    p.add_argument("--train", required=True, help="folder of the generator's training images")
    p.add_argument("--holdout", required=True, help="folder of real images the generator never saw (the null)")
    p.add_argument("--synthetic", required=True, help="folder of generated images to audit")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scorers", default=",".join(DEFAULT_SCORERS),
                   help=f"comma-separated scorers (known: {', '.join(known_scorers())}; default %(default)s)")
    p.add_argument("--labels", default=None, help="expert labels CSV with columns file,is_replica")
    p.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                   help="holdout quantile used as threshold (default %(default)s)")
    p.add_argument("--deepssim", default=None, help="DeepSSIM checkpoint folder (from `audit deepssim train`)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of learned scorers trained at fit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attacks.replicas.pipeline import run_folder_audit

    scorers = parse_scorer_list(args.scorers)
    summary = run_folder_audit(args.train, args.holdout, args.synthetic, args.out, scorers,
                               quantile=args.quantile, labels_csv=args.labels, deepssim_checkpoint=args.deepssim,
                               device=args.device, batch_size=args.batch_size, seed=args.seed)
    flagged = summary["flagged"]
    print(f"replicas: {flagged['value'] * 100:.1f}% of {flagged['n']} synthetic images flagged "
          f"(95% CI {flagged['ci_low'] * 100:.1f}-{flagged['ci_high'] * 100:.1f}%), threshold = holdout "
          f"q{args.quantile}; wrote {args.out}/replicas.csv")
    return EXIT_OK
