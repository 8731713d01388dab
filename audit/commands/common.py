"""Options shared by several commands, so flags mean the same thing everywhere."""

from __future__ import annotations

import argparse


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def add_data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--data", required=required, metavar="NAME",
                        help="dataset preset (vindr, phantom-mammo, phantom-brain3d) or a YAML file")
    parser.add_argument("--data-root", metavar="DIR", help="folder holding the dataset (overrides the preset's root)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="preprocessing cache (default: $SYNTH_AUDIT_CACHE or ~/.cache/synth-audit)")


def data_config_from_args(args: argparse.Namespace):
    from audit.config import load_data_config

    overrides = {"cache_dir": args.cache_dir} if getattr(args, "cache_dir", None) else None
    return load_data_config(args.data, root=args.data_root, overrides=overrides)
