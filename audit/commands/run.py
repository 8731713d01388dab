"""`audit run` (one model → report + verdict) and `audit compare` (several reports side by side).

    audit run --model CKPT|PIPELINE_DIR|IMAGE_DIR --data NAME [--data-root DIR] [--config FILE] [--gates FILE]
              [--out DIR] [--stages generate,fidelity,utility,reid,membership,replicas] [--n N] [--device ...]
              [--seed S] [--members DIR|CSV] [--release DIR] [--json] [--quiet]
    audit compare REPORT.json... --out DIR [--risk METRIC] [--worth METRIC] [--json]

Exit codes of `run`: 0 PASS or WARN, 1 FAIL, 2 ERROR or bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.commands.common import add_data_options
from audit.parallel import add_executor_options
from audit.errors import EXIT_ERROR, EXIT_OK

# flags that map 1:1 to keys of the run configuration (audit/run_config.py)
FLAG_KEYS = ("model", "data", "data_root", "cache_dir", "out", "gates", "stages", "n", "device", "seed", "members",
             "batch_size", "threads", "release")


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run", help="audit one model: generation, fidelity, utility, re-identification, membership, replicas, "
                    "gates, report",
        description="Audit one generative model and write OUT/report.json, report.html and report.md with a "
                    "release verdict (PASS/WARN/FAIL/ERROR). A rerun resumes: finished stages are reused, and a "
                    "changed configuration re-runs exactly the stages that depend on it.")
    run.add_argument("--model", metavar="CKPT|PIPELINE_DIR|IMAGE_DIR",
                     help="synth-audit checkpoint, diffusers pipeline folder, or a folder of images")
    add_data_options(run, required=False)
    run.add_argument("--config", metavar="FILE", help="YAML with the same keys as these flags, plus one section per "
                                                      "stage (its parameters); flags win over the file")
    run.add_argument("--gates", metavar="FILE", help="release gates: a preset name or a YAML file (default: default)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: audit-out)")
    run.add_argument("--stages", metavar="LIST",
                     help="comma-separated stages to run (default: generate,fidelity,utility,reid,membership,"
                          "replicas); generation runs whenever a later stage needs it")
    run.add_argument("--n", type=int, help="synthetic images (default: 128 from a model, all of an image folder)")
    run.add_argument("--device", help="torch device (default: cpu)")
    run.add_argument("--seed", type=int, help="seed of generation and of every stage (default: 0)")
    run.add_argument("--members", metavar="DIR|CSV",
                     help="the model's training images: a folder, or a CSV with an 'id' column (default: the "
                          "checkpoint's training records, or the train split)")
    run.add_argument("--batch-size", type=int, help="images per batch in the stages (default: 32)")
    run.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy machine)")
    run.add_argument("--release", metavar="DIR", help="write the releasable synthetic set (flagged images removed, "
                                                      "no patient identifiers) and release.json, if the verdict "
                                                      "is PASS or WARN")
    run.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress; print only the verdict line (CI)")
    add_executor_options(run)
    run.set_defaults(func=run_command)

    compare = subparsers.add_parser(
        "compare", help="set several audit reports side by side (privacy-utility frontier, gate figures, verdicts)",
        description="Compare models from their report.json files: compare.html (self-contained) and compare.json.")
    compare.add_argument("reports", nargs="+", metavar="REPORT.json")
    compare.add_argument("--out", required=True, metavar="DIR")
    compare.add_argument("--risk", metavar="METRIC", help="privacy figure for the x axis (default: the first "
                                                          "present of membership/best/auc, replicas/flagged_share, "
                                                          "reid/risk_at_fpr_1pct)")
    compare.add_argument("--worth", metavar="METRIC", help="utility or fidelity figure for the y axis (default: "
                                                           "utility/tstr_auc, else fidelity/fid_over_floor)")
    compare.add_argument("--json", action="store_true", help="print the comparison summary as JSON on stdout")
    compare.set_defaults(func=compare_command)


def invoked_command(args: argparse.Namespace) -> list[str]:
    """The command as typed when run from the `audit` entry point; otherwise its equivalent from the flags."""
    if Path(sys.argv[0]).name == "audit":
        return ["audit", *sys.argv[1:]]
    line = ["audit", "run"]
    for key in (*FLAG_KEYS, "config"):
        value = getattr(args, key, None)
        if value is not None:
            line += [f"--{key.replace('_', '-')}", str(value)]
    return line + [f"--{flag}" for flag in ("json", "quiet") if getattr(args, flag, False)]


def run_command(args: argparse.Namespace) -> int:
    from audit.parallel import executor_from_args
    from audit.pipeline import Pipeline
    from audit.progress import progress_enabled
    from audit.run_config import resolve_run_config

    config = resolve_run_config({k: getattr(args, k, None) for k in FLAG_KEYS}, args.config)
    # a missing Ray is a one-line error before any work; where the passes run never changes a result, so the
    # executor is not part of the configuration (nor of any stage's key)
    executor = executor_from_args(args)
    chatty = not (args.quiet or args.json)
    pipeline = Pipeline(config, command=invoked_command(args), show_progress=not args.quiet and progress_enabled(),
                        say=(lambda line: print(line, file=sys.stderr)) if chatty else None, executor=executor)
    result = pipeline.run()
    code = result.exit_code
    if result.release is not None and not result.release["released"] and result.verdict.verdict in ("PASS", "WARN"):
        code = EXIT_ERROR  # asked for a release that could not be made although the verdict allows one
    if args.json:
        print(json.dumps(summary(result, code), indent=2))
    elif args.quiet:
        print(f"verdict: {result.verdict.verdict} ({result.paths['html']})")
    else:
        print_summary(result)
    return code


def summary(result, code: int) -> dict:
    return {"verdict": result.verdict.verdict, "exit_code": code, "reasons": result.verdict.reasons,
            "gates": [{k: g[k] for k in ("metric", "status", "on", "op", "threshold", "observed", "n_needed",
                                         "message")} for g in result.report["gates"]["results"]],
            "stages": {n: {"status": s["status"], "reason": s["reason"]} for n, s in result.report["stages"].items()},
            "report": {k: str(v) for k, v in result.paths.items()}, "release": result.release}


def print_summary(result) -> None:
    from reports.render import VERDICT_SENTENCES, estimate_text

    verdict = result.verdict.verdict
    print(f"verdict: {verdict} — {VERDICT_SENTENCES[verdict]}")
    for gate in result.report["gates"]["results"]:
        print(f"  {gate['status'].upper():<5} {gate['metric']:<34} {estimate_text(gate['estimate']):<28} "
              f"{gate['on']} {gate['op']} {gate['threshold']:g}")
        if gate["status"] != "pass":
            print(f"        {gate['message']}")
    for reason in result.verdict.reasons:
        if not any(reason == g["message"] for g in result.report["gates"]["results"]) and verdict != "PASS":
            print(f"  - {reason}")
    print(f"report: {result.paths['html']} (also report.json, report.md)")
    if result.release is not None:
        rel = result.release
        if rel["released"]:
            print(f"release: {rel['n_released']} images ({rel['n_removed']} flagged ones removed) → {rel['folder']}")
        else:
            print(f"release refused ({rel['reason']}); nothing written to {rel['folder']}")


def compare_command(args: argparse.Namespace) -> int:
    from reports.compare import compare_reports

    result = compare_reports([Path(p) for p in args.reports], Path(args.out), risk=args.risk, worth=args.worth)
    if args.json:
        print(json.dumps(result["summary"], indent=2))
    else:
        for warning in result["summary"]["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        for row in result["summary"]["models"]:
            print(f"  {row['verdict']:<5} {row['label']}")
        print(f"compare: {result['paths']['html']} (also compare.json)")
    return EXIT_OK
