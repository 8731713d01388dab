"""The suite's own privacy: identifying values planted in DICOM headers (standard, free-text, private and nested
attributes, instance UIDs) and NIfTI headers (text fields and extensions) never reach an output.

Every command of `PHI_COMMANDS` runs on the planted corpus (tests/phi_corpus.py); then every byte under its
output folder, the shared preprocessing cache and everything the command printed or logged is searched for every
planted value in every encoding `tests.phi_corpus.needles` lists, including inside gzip, zip (.npz) and PNG
streams. DICOM files the suite writes must carry fresh UIDs and technical attributes only.

`audit run` (every stage), `audit attack reid|mia` and `audit score fidelity|utility` run on the VinDr corpus
with the model trained on it; a new command joins by appending a `CliCase` to `PHI_COMMANDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_harness import CliCase, CliResult, run_cli, tiny_ldm2d_preset
from tests.phi_corpus import (SearchResult, corpus_input_uids, planted_values, search_text, search_tree,
                              write_planted_dicom_folder, write_planted_nifti_dataset, write_planted_vindr,
                              written_dicom_problems)


@dataclass
class PhiWorkspace:
    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def vindr(self) -> Path:
        return self.inputs / "vindr"

    @property
    def nifti(self) -> Path:
        return self.inputs / "nifti"

    @property
    def dicom_train(self) -> Path:
        return self.inputs / "dicom-train"

    @property
    def dicom_test(self) -> Path:
        return self.inputs / "dicom-test"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def config(self, name: str) -> str:
        return str(self.configs / f"{name}.yaml")

    def out(self, name: str) -> str:
        return str(self.root / "out" / name)


def _data(ws, config: str, root: Path) -> list[str]:
    return ["--data", ws.config(config), "--data-root", str(root), "--cache-dir", str(ws.cache)]


def _options(sections: dict) -> list[str]:
    """{'attacker': {'epochs': 1}} → ['--option', 'attacker.epochs=1']"""
    return [token for part, values in sections.items() for key, value in values.items()
            for token in ("--option", f"{part}.{key}={value}")]


# `audit run` with every stage, sized for a 20-image corpus on a CPU (what is tested is where values go)
RUN_CONFIG = {
    "n": 16, "batch_size": 8, "threads": 1,
    "generate": {"batch_size": 8, "steps": 2},
    "fidelity": {"n_boot": 20, "kid_subsets": 10, "ratio_repeats": 2},
    "membership": {"attacks": ["loss", "dcr"], "n_boot": 20, "min_pairs": 2},
    "replicas": {"scorers": ["ncc"]},
    "reid": {"attacker": {"epochs": 1, "max_steps": 2, "patients_per_batch": 2, "m_per_class": 2},
             "evaluation": {"n_boot": 20, "n_permutations": 20}},
    "utility": {"n_boot": 20, "recipe": {"steps": 2}},
}


# Every command that reads patient data or writes outputs today, in dependency order.
PHI_COMMANDS: list[CliCase] = [
    CliCase("data-inspect-vindr", lambda ws: ["data", "inspect", *_data(ws, "vindr", ws.vindr),
                                              "--out", ws.out("inspect-vindr")]),
    CliCase("data-inspect-nifti", lambda ws: ["data", "inspect", *_data(ws, "nifti", ws.nifti),
                                              "--out", ws.out("inspect-nifti")]),
    CliCase("data-inspect-dicom-folder", lambda ws: ["data", "inspect", *_data(ws, "folder", ws.dicom_train),
                                                     "--out", ws.out("inspect-folder")]),
    CliCase("data-export-vindr", lambda ws: ["data", "export", *_data(ws, "vindr", ws.vindr), "--split", "train",
                                             "--out", ws.out("export-vindr")]),
    CliCase("data-export-nifti", lambda ws: ["data", "export", *_data(ws, "nifti", ws.nifti),
                                             "--split", "train,test", "--out", ws.out("export-nifti")]),
    CliCase("generator-train-vindr", lambda ws: ["generator", "train", *_data(ws, "vindr", ws.vindr),
                                                 "--config", ws.config("generator"), "--out", ws.out("model-ldm"),
                                                 "--threads", "1"]),
    CliCase("generate-ldm", lambda ws: ["generate", "--model", ws.out("model-ldm"), "--n", "4",
                                        "--out", ws.out("generated-ldm"), "--threads", "1"]),
    CliCase("generate-dicom-folder-model", lambda ws: ["generate", "--model", str(ws.dicom_train), "--n", "4",
                                                       "--out", ws.out("generated-folder")]),
    CliCase("replicas-dicom-folders", lambda ws: ["replicas", "--train", str(ws.dicom_train), "--holdout",
                                                  str(ws.dicom_test), "--synthetic", ws.out("generated-folder"),
                                                  "--out", ws.out("replicas"), "--scorers", "ncc,ssim"],
            expect_codes=(0, 1), notes="the synthetic set is the training images: the release gate may say FAIL"),
    CliCase("deepssim-train-dicom-folder", lambda ws: ["deepssim", "train", "--train-folder", str(ws.dicom_train),
                                                       "--shape", "16x16", "--epochs", "1", "--batch-size", "4",
                                                       "--out", ws.out("deepssim-folder")]),
    CliCase("deepssim-train-vindr", lambda ws: ["deepssim", "train", *_data(ws, "vindr", ws.vindr),
                                                "--epochs", "1", "--batch-size", "4",
                                                "--out", ws.out("deepssim-vindr")]),
    CliCase("data-phantom", lambda ws: ["data", "phantom", "--kind", "mammo", "--patients", "2",
                                        "--out", ws.out("phantom")]),
    # phase 2: the audit itself (every stage, CPU-sized parameters from configs/run.yaml) and its verbs
    CliCase("run-vindr", lambda ws: ["run", "--model", ws.out("model-ldm"), *_data(ws, "vindr", ws.vindr),
                                     "--config", ws.config("run"), "--out", ws.out("run")], expect_codes=(0, 1)),
    CliCase("attack-reid-vindr", lambda ws: ["attack", "reid", *_data(ws, "vindr", ws.vindr), "--synthetic",
                                             ws.out("generated-ldm"), "--out", ws.out("attack-reid"), "--threads",
                                             "1", *_options(RUN_CONFIG["reid"])]),
    CliCase("attack-mia-vindr", lambda ws: ["attack", "mia", "--model", ws.out("model-ldm"),
                                            *_data(ws, "vindr", ws.vindr), "--attacks", "loss,dcr",
                                            "--n-synthetic", "8", "--n-boot", "20", "--min-members", "2",
                                            "--out", ws.out("attack-mia"), "--threads", "1"]),
    CliCase("score-fidelity-vindr", lambda ws: ["score", "fidelity", *_data(ws, "vindr", ws.vindr), "--model",
                                                ws.out("model-ldm"), "--n", "8", "--n-boot", "20",
                                                "--out", ws.out("score-fidelity"), "--threads", "1"]),
    CliCase("score-utility-vindr", lambda ws: ["score", "utility", *_data(ws, "vindr", ws.vindr), "--synthetic",
                                               ws.out("generated-ldm"), "--steps", "2", "--n-boot", "20",
                                               "--out", ws.out("score-utility"), "--threads", "1"]),
]


def build_workspace(root: Path) -> PhiWorkspace:
    ws = PhiWorkspace(root)
    # 3 training and 2 held-out patients (studies), a lesion on either side: enough for every stage of audit run
    write_planted_vindr(ws.vindr, n_studies=5, test_studies=(3, 4), lesion_studies=(0, 3))
    write_planted_nifti_dataset(ws.nifti)
    write_planted_dicom_folder(ws.dicom_train, 6, seed=0)
    write_planted_dicom_folder(ws.dicom_test, 4, seed=1)
    ws.configs.mkdir(parents=True)
    presets = {
        "vindr": {"name": "phi-vindr", "reader": "vindr", "modality": "MG", "preprocess": {"shape": [32, 24]}},
        "nifti": {"name": "phi-nifti", "reader": "nifti", "modality": "MR", "preprocess": {"shape": [12, 12, 12]}},
        "folder": {"name": "phi-folder", "reader": "folder", "preprocess": {"shape": [20, 16]}},
        "generator": tiny_ldm2d_preset(steps=2),
        "run": RUN_CONFIG,
    }
    for name, preset in presets.items():
        (ws.configs / f"{name}.yaml").write_text(yaml.safe_dump(preset))
    return ws


@pytest.fixture(scope="module")
def phi_runs(tmp_path_factory) -> tuple[PhiWorkspace, dict[str, CliResult]]:
    ws = build_workspace(tmp_path_factory.mktemp("phi"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {case.name: run_cli(case.argv(ws), env={"SYNTH_AUDIT_CACHE": str(ws.cache),
                                                          "SYNTH_AUDIT_PROGRESS": "off"})
                   for case in PHI_COMMANDS}
    finally:
        torch.set_num_threads(threads)
    return ws, results


def test_the_corpus_carries_every_planted_value_where_the_search_finds_it(phi_runs):
    """The search is able to fail: run on the inputs, it finds every planted value (NIfTI ones only inside the
    gzip stream, private and nested DICOM ones among binary elements)."""
    ws, _ = phi_runs
    values = planted_values()
    found = {leak.value_name for leak in search_tree([ws.inputs], values).leaks}
    assert found == set(values)
    nifti_only = {k: v for k, v in values.items() if k.startswith("nifti:")}
    raw_hits = {leak.value_name for leak in search_tree([ws.nifti], nifti_only).leaks if "[raw]" in leak.where}
    assert not raw_hits  # the volumes are .nii.gz: only the decompressed view shows the header


def _out_folder(case: CliCase, ws: PhiWorkspace) -> Path:
    argv = case.argv(ws)
    return Path(argv[argv.index("--out") + 1])


@pytest.fixture(scope="module")
def phi_search(phi_runs) -> dict[str, SearchResult]:
    """Every command's output folder and captured text, and the shared cache, searched once."""
    ws, results = phi_runs
    values = planted_values()
    found = {}
    for case in PHI_COMMANDS:
        result = results[case.name]
        search = search_tree([_out_folder(case, ws)], values)
        search.merge(search_text(result.stdout, f"{case.name} stdout", values))
        search.merge(search_text(result.stderr, f"{case.name} stderr", values))
        search.merge(search_text(result.log, f"{case.name} log/warnings", values))
        found[case.name] = search
    found["cache"] = search_tree([ws.cache], values)
    return found


@pytest.mark.parametrize("case", PHI_COMMANDS, ids=[c.name for c in PHI_COMMANDS])
def test_command_leaks_no_planted_value(phi_runs, phi_search, case):
    ws, results = phi_runs
    result = results[case.name]
    assert result.code in case.expect_codes, result.stderr[-2000:]
    found = phi_search[case.name]
    assert found.files_searched > 0, f"{case.name} wrote nothing under {_out_folder(case, ws)}"
    assert not found.leaks, found.describe()


def test_cache_leaks_no_planted_value(phi_runs, phi_search):
    ws, _ = phi_runs
    found = phi_search["cache"]
    assert found.files_searched > 0 and any(p.suffix == ".npz" for p in ws.cache.rglob("*"))
    assert any(p.parent.name == "dicom-headers" for p in ws.cache.rglob("*.json"))  # the header memo is searched
    assert not found.leaks, found.describe()


def test_dicom_written_by_the_suite_has_fresh_uids_and_technical_tags_only(phi_runs):
    ws, _ = phi_runs
    input_uids = corpus_input_uids([ws.inputs])
    count, problems = written_dicom_problems([ws.root / "out"], input_uids)
    assert count >= 8  # the phantom's files: the check ran on real output
    assert not problems, problems[:10]
    # the check is able to fail: an input file copied as output breaks every rule
    _, input_problems = written_dicom_problems([ws.dicom_train], input_uids)
    assert any("private tag" in p for p in input_problems) and any("copies an input UID" in p for p in input_problems)
    assert any("PatientName" in p for p in input_problems)


def test_privacy_counts(phi_runs, phi_search):
    """The figures the README cites: planted values, outputs searched (files, bytes incl. decompressed views)."""
    ws, _ = phi_runs
    values = planted_values()
    total = SearchResult()
    for search in phi_search.values():
        total.merge(search)
    inputs = sum(1 for p in ws.inputs.rglob("*") if p.is_file() and p.suffix in (".dicom", ".dcm", ".gz"))
    print(f"\nprivacy: {len(values)} planted values ({sum(k.startswith('dicom:') for k in values)} DICOM, "
          f"{sum(k.startswith('nifti:') for k in values)} NIfTI) in {inputs} input files; {len(PHI_COMMANDS)} "
          f"commands; searched {total.files_searched} output files, {total.views_searched} views, "
          f"{total.bytes_searched:,} bytes; leaks: {len(total.leaks)}")
    assert not total.leaks and total.bytes_searched > 100_000
