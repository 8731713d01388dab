"""Command groups whose verbs live in separate modules (`audit attack reid|mia`, `audit score fidelity|utility`).

Each verb module exposes `register(subparsers)` adding its own parser, like the top-level command families.
"""

from __future__ import annotations

import importlib


def register_group(subparsers, name: str, help_text: str, verb_modules: tuple[str, ...]) -> None:
    group = subparsers.add_parser(name, help=help_text, description=help_text)
    verbs = group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    verbs.required = True
    for module_name in verb_modules:
        importlib.import_module(module_name).register(verbs)
