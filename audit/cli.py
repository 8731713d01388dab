"""`audit` command line: a thin argparse layer. Each command family lives in its own module exposing
`register(subparsers)`; the handler it sets (`func`) takes the parsed args and returns an exit code.

Exit codes: 0 PASS/WARN/success, 1 FAIL, 2 ERROR or bad input (one line on stderr; `--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from audit.errors import EXIT_ERROR, AuditError

# Command families, in the order `audit --help` lists them. Adding a family = adding its module here.
COMMAND_MODULES = (
    "audit.commands.data",
    "generators.cli",
    "attacks.replicas.deepssim_cli",
    "attacks.replicas.cli",
    "attacks.cli",
    "audit.commands.score",
    "audit.commands.run",
    "audit.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit",
        description="Privacy audit for synthetic medical images: replicas, membership, re-identification, "
                    "fidelity and utility.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # --debug is global: accepted anywhere on the line, whatever the subcommand declares
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except AuditError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
