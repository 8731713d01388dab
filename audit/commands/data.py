"""`audit data ...`: build phantom datasets, inspect datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.commands.common import add_data_options, add_debug, data_config_from_args
from audit.errors import AuditInputError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build phantom datasets; inspect or export a dataset")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True

    phantom = data_sub.add_parser("phantom", help="write a procedural phantom dataset (VinDr-Mammo layout or NIfTI)")
    phantom.add_argument("--kind", choices=("mammo", "brain3d"), default="mammo")
    phantom.add_argument("--patients", type=int, default=50)
    phantom.add_argument("--out", required=True, metavar="DIR")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--test-fraction", type=float, default=0.2)
    phantom.add_argument("--with-masks", action="store_true", help="also write tissue / lesion masks")
    add_debug(phantom)
    phantom.set_defaults(func=run_phantom)

    inspect = data_sub.add_parser("inspect", help="counts, skipped/failed files and a contact sheet")
    add_data_options(inspect)
    inspect.add_argument("--out", metavar="DIR", help="where inspect.json and contact_sheet.png go "
                                                      "(default: ./inspect-<dataset>)")
    inspect.add_argument("--decode", choices=("all", "sample", "none"), default="all",
                         help="decode every image (fills the cache, finds broken files), only the sheet's, or none")
    inspect.add_argument("--samples", type=int, default=24, help="images on the contact sheet")
    add_debug(inspect)
    inspect.set_defaults(func=run_inspect)

    export = data_sub.add_parser("export", help="write one split, preprocessed, as an image folder + manifest.csv")
    add_data_options(export)
    export.add_argument("--split", required=True, help="split(s) to export, comma-separated (train, test, ...)")
    export.add_argument("--out", required=True, metavar="DIR")
    add_debug(export)
    export.set_defaults(func=run_export)


def run_phantom(args: argparse.Namespace) -> int:
    from audit.data.phantoms import write_brain3d_phantom, write_mammo_phantom
    from audit.progress import progress_enabled

    if args.patients < 2:
        raise AuditInputError(None, "--patients must be at least 2 (one train and one test patient)")
    if not 0 < args.test_fraction < 1:
        raise AuditInputError(None, "--test-fraction must be between 0 and 1")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise AuditInputError(out, "output folder exists and is not empty (refusing to overwrite)")
    writer = {"mammo": write_mammo_phantom, "brain3d": write_brain3d_phantom}[args.kind]
    try:
        summary = writer(out, patients=args.patients, seed=args.seed, test_fraction=args.test_fraction,
                         with_masks=args.with_masks, progress=progress_enabled())
    except (ValueError, FileExistsError) as err:  # the writers validate their own arguments
        raise AuditInputError(out, str(err)) from None
    print(f"wrote {summary}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from audit.data.dataset import open_dataset
    from audit.data.inspect import format_report, inspect_dataset

    cfg = data_config_from_args(args)
    dataset = open_dataset(cfg)
    out = Path(args.out or f"inspect-{cfg.name}")
    out.mkdir(parents=True, exist_ok=True)
    report = inspect_dataset(dataset, decode=args.decode, sheet=out / "contact_sheet.png", sheet_size=args.samples)
    (out / "inspect.json").write_text(report.to_json())
    print(format_report(report))
    print(f"wrote {out / 'inspect.json'} and {out / 'contact_sheet.png'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from audit.data.dataset import open_dataset
    from audit.data.export import export_dataset

    cfg = data_config_from_args(args)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    key = {"dataset": cfg.name, "root": str(cfg.root.resolve()) if cfg.root else None,
           "preprocess": cfg.preprocess_key(), "splits": splits}
    result = export_dataset(open_dataset(cfg), args.out, splits, key)
    total = result.written + result.kept + len(result.failed)
    print(f"exported {result.written + result.kept} of {total} images of {cfg.name} "
          f"({'+'.join(splits)}, shape {tuple(result.shape)}) to {args.out}"
          + (f"; {result.kept} already there" if result.kept else ""))
    if result.failed:
        print(f"INCOMPLETE: {len(result.failed)} images failed to decode (listed in export.json):")
        for f in result.failed[:20]:
            print(f"  {f['path']}: {f['reason']}")
    return 0
