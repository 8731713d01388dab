"""`audit attack reid|mia`: linkage and membership attacks (folder contracts: reid.csv, mia_scores.csv)."""

from __future__ import annotations

from audit.commands.groups import register_group

VERB_MODULES = ("attacks.reid.cli", "attacks.membership.cli")


def register(subparsers) -> None:
    register_group(subparsers, "attack", "privacy attacks: re-identification (reid) and membership inference (mia)",
                   VERB_MODULES)
