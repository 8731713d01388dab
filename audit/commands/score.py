"""`audit score fidelity|utility`: is the synthetic set worth releasing (folder contract: fidelity.json)."""

from __future__ import annotations

from audit.commands.groups import register_group

VERB_MODULES = ("audit.metrics.fidelity_cli", "audit.metrics.utility_cli")


def register(subparsers) -> None:
    register_group(subparsers, "score", "worth: fidelity (FID/KID/precision-recall) and utility (TSTR)", VERB_MODULES)
