"""Utility acceptance runs (not run by CI): TSTR vs TRTR for the shared models on the phantom datasets.

Runs `audit score utility` for every (model, target) job, each into OUT/<model>-<target>/, and writes the table
OUT/bench_utility.json / .md (AUCs with patient-level 95 % intervals, the gap with its paired interval, the
sizes and prevalences of every set). The first target of a model generates its synthetic set (`--model`); the
others reuse that folder (`--synthetic`). The TRTR arm of each (data, target) is trained once and then comes
from the artefact cache (the `trtr_from_cache` column).

    SYNTH_AUDIT_CACHE=/tmp/cache .venv/bin/python benchmarks/bench_utility.py --out DIR \
        --mammo-root /work/data/mammo80 --mammo-holdout HELD_OUT_MAMMO \
        --brain-root /work/data/brain40 --brain-holdout HELD_OUT_BRAIN \
        --model2d ldm2d-tiny=/work/models/ldm2d-tiny --model2d memorize-quick=/work/models/memorize-quick \
        --model3d ldm3d-tiny=/work/models/ldm3d-tiny --threads 1

A held-out root is a phantom of the same kind drawn with another seed (`audit data phantom --seed S`): new
patients from the same distribution; every image of it is a test image (without it: the data's test split).
Brain phantoms reuse the ids P0000… under every seed: prefix the held-out manifest's `id` and `patient_id`
(e.g. `H101_`) and copy the volumes, or the CLI refuses the shared patient ids. Results of 2026-11-30:
benchmarks/results/bench_utility.md (and docs/utility.md, "Measured").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from audit.cli import main as audit_main


def parse_models(items: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--model2d/--model3d: expected NAME=PATH, got {item!r}")
        out.append((name, path))
    return out


def run_job(out: Path, data: str, root: str, holdout: str | None, model: tuple[str, str], target: str,
            synthetic_from: Path | None, common: list[str], mixed: bool) -> dict:
    name = f"{model[0]}-{target.replace(':', '_')}"
    job_out = out / name
    argv = ["score", "utility", "--data", data, "--data-root", root, "--target", target, "--out", str(job_out),
            *common]
    if holdout:
        argv += ["--holdout-root", holdout]
    argv += ["--synthetic", str(synthetic_from)] if synthetic_from else ["--model", model[1]]
    if mixed:
        argv.append("--mixed")
    started = time.perf_counter()
    code = audit_main(argv)
    if code != 0:
        raise SystemExit(f"{name}: audit score utility exited {code}")
    result = json.loads((job_out / "utility.json").read_text())
    return {"job": name, "model": model[0], "target": target, "data": data, "command": "audit " + " ".join(argv),
            "seconds": round(time.perf_counter() - started, 1), "result": result,
            "synthetic": str(synthetic_from or job_out / "synthetic")}


def fmt(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "—"
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Utility benchmark ({meta['date']}, {meta['machine']})", "",
             "ROC-AUC on held-out real images; [95 % interval] from a bootstrap over test patients; gap = TRTR − "
             "TSTR with a paired interval.", "",
             "| model | target | TRTR | TSTR | mixed | gap | test images / patients (prevalence) | "
             "train real / synthetic | TRTR cached |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        r = row["result"]
        test = r["sets"]["test"]
        prevalence = ", ".join(f"{k} {v:.2f}" for k, v in test["prevalence"].items())
        lines.append(f"| {row['model']} | {row['target']} | {fmt(r.get('trtr_auc'))} | {fmt(r.get('tstr_auc'))} | "
                     f"{fmt(r.get('mixed_auc'))} | {fmt(r.get('gap'))} | {test['images']} / {test['patients']} "
                     f"({prevalence}) | {r['sets']['trtr']['images']} / {r['sets']['tstr']['images']} | "
                     f"{r['trtr_from_cache']} |")
    lines += ["", "Commands:", ""] + [f"    {row['command']}" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--mammo-root")
    p.add_argument("--mammo-holdout")
    p.add_argument("--mammo-targets", default="malignancy,density")
    p.add_argument("--brain-root")
    p.add_argument("--brain-holdout")
    p.add_argument("--brain-targets", default="lesion")
    p.add_argument("--model2d", action="append", help="NAME=PATH (repeatable)")
    p.add_argument("--model3d", action="append", help="NAME=PATH (repeatable)")
    p.add_argument("--mixed", action="store_true", help="also the mixed real + synthetic arm")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--seed", str(args.seed), "--threads", str(args.threads)]
    if args.steps:
        common += ["--steps", str(args.steps)]
    plan = []
    if args.mammo_root:
        plan += [("phantom-mammo", args.mammo_root, args.mammo_holdout, m, args.mammo_targets.split(","))
                 for m in parse_models(args.model2d)]
    if args.brain_root:
        plan += [("phantom-brain3d", args.brain_root, args.brain_holdout, m, args.brain_targets.split(","))
                 for m in parse_models(args.model3d)]
    rows = []
    for data, root, holdout, model, targets in plan:
        synthetic = None
        for target in targets:
            row = run_job(out, data, root, holdout, model, target, synthetic, common, args.mixed)
            synthetic = Path(row["synthetic"])
            rows.append(row)
            (out / "bench_utility.json").write_text(json.dumps({"rows": rows}, indent=2))
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, threads {args.threads}"}
    (out / "bench_utility.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "bench_utility.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
