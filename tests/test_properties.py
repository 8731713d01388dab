"""Property-based tests (hypothesis) of every parser that takes user text: any input either parses into a valid
object or raises the suite's one-line `AuditInputError` — never another exception, never an evaluated expression.

Parsers: the CSV reader (audit/data/csvio.py) and its callers (folder manifest, NIfTI manifest, VinDr annotation
CSVs), the label parsers ("BI-RADS n", "DENSITY X", "['Mass', ...]", laterality, integers), the generators'
conditions CSV, and config YAML (dataset and generator presets). Derandomized (the same examples every run) and
without hypothesis' example database, so CI is reproducible; `EXAMPLES` counts what ran (printed at the end).
"""

from __future__ import annotations

import builtins
import csv
import io
import math
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.config import DataConfig, PreprocessConfig, parse_yaml_text, validate
from audit.data import labels
from audit.data.csvio import read_csv_rows
from audit.errors import AuditInputError

EXAMPLES: Counter = Counter()
PARSED: Counter = Counter()  # examples whose input parsed (the properties also exercise the success paths)
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=120)


CURRENT = [""]


def count(name: str) -> None:
    EXAMPLES[name] += 1
    CURRENT[0] = name


@pytest.fixture(scope="module", autouse=True)
def report_examples():
    yield
    print(f"\nproperty tests: {sum(EXAMPLES.values())} examples — " +
          ", ".join(f"{k} {v}" + (f" ({PARSED[k]} parsed)" if k in PARSED else "") for k, v in sorted(EXAMPLES.items())))


def outcome(call, *args, **kwargs):
    """The parser's result, or None when it raised AuditInputError with a one-line message; anything else
    propagates and fails the property."""
    try:
        result = call(*args, **kwargs)
        PARSED[CURRENT[0]] += 1
        return result
    except AuditInputError as err:
        shown = str(err)  # what the CLI prints after `error: ` (control characters escaped by AuditInputError)
        assert "\n" not in shown and "\r" not in shown, f"multi-line error: {shown!r}"
        return None


# --- strategies ---------------------------------------------------------------------------------------------------

CSV_ALPHABET = st.sampled_from(list(string.ascii_letters + string.digits + ',;"\'\n\r\t []{}()_-.:/\\\x00é名\ufeff😀'))
csv_text = st.text(CSV_ALPHABET, max_size=400)
cell = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "nan", "inf", "-1", "1e400", "4", "BI-RADS 3",
                                                        "DENSITY C", "['Mass']", "../x", "/etc/passwd", "a\nb",
                                                        '"', "L", "R", "train", "test", "training"]))


def rows_text(columns: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def mostly(valid, junk=cell):
    """Valid values three times in four, so that the properties exercise the success paths too."""
    return st.one_of(valid, valid, valid, junk)


def table(known: list[str]):
    """A CSV text whose header draws from the columns a reader knows (plus junk sometimes), with rows of the
    header's width (ragged sometimes)."""
    header = st.lists(mostly(st.sampled_from(known), st.text(max_size=8)), min_size=1, max_size=len(known) + 2)

    def rows(cols):
        width = st.just(len(cols)) if len(cols) < 2 else mostly(st.just(len(cols)), st.sampled_from(
            [len(cols) - 1, len(cols) + 1]))
        return st.lists(width.flatmap(lambda n: st.lists(cell, min_size=n, max_size=n)), max_size=6).map(
            lambda body: rows_text(cols, body))
    return header.flatmap(rows)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


# --- the CSV reader ------------------------------------------------------------------------------------------------

@SETTINGS
@given(text=st.one_of(csv_text, st.binary(max_size=300), table(["a", "b", "file"])), required=st.lists(st.sampled_from(["a", "b", "file"]),
                                                                              max_size=2))
def test_csv_reader_returns_rows_or_one_line_error(tmp_path, text, required):
    count("csv reader")
    rows = outcome(read_csv_rows, write(tmp_path / "x.csv", text), "CSV", required)
    if rows is not None:
        header = list(rows[0]) if rows else []
        assert all(list(r) == header for r in rows) and all(isinstance(v, str) for r in rows for v in r.values())
        assert all(c in header for c in required) or not rows
        assert len(rows.lines) == len(rows) and rows.lines == sorted(rows.lines)


@SETTINGS
@given(values=st.lists(st.lists(st.text(max_size=12), min_size=3, max_size=3), min_size=1, max_size=5))
def test_csv_reader_round_trips_what_csv_writer_wrote(tmp_path, values):
    count("csv round trip")
    path = tmp_path / "y.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["a", "b", "c"], *values])
    rows = outcome(read_csv_rows, path, "CSV", ("a", "b", "c"), allow_empty=True)
    assert rows is not None  # csv.writer's output always parses
    assert [[r["a"], r["b"], r["c"]] for r in rows] == values


# --- label parsers ------------------------------------------------------------------------------------------------

@SETTINGS
@given(text=st.one_of(st.text(max_size=40), st.from_regex(r"\s*(BI-?RADS)?\s*[0-9]{1,2}(\.0)?[ABC]?\s*", fullmatch=True)))
def test_birads_parses_to_0_6_or_errors(text):
    count("birads")
    value = outcome(labels.parse_birads, text, "x.csv", "birads", 2)
    assert value is None or (isinstance(value, int) and 0 <= value <= 6)
    if value is not None:
        assert str(value) in text


@SETTINGS
@given(text=st.one_of(st.text(max_size=20), st.from_regex(r"\s*(DENSITY)?\s*[A-Fa-f]\s*", fullmatch=True)))
def test_density_parses_to_a_d_or_errors(text):
    count("density")
    value = outcome(labels.parse_density, text, "x.csv", "density", 2)
    assert value is None or value in ("A", "B", "C", "D")


@SETTINGS
@given(text=st.text(max_size=12))
def test_laterality_and_integers(text):
    count("laterality/int")
    assert outcome(labels.parse_laterality, text, "x.csv", "laterality") in (None, "L", "R")
    number = outcome(labels.parse_optional_int, text, "x.csv", "n")
    assert number is None or (isinstance(number, int) and math.isfinite(float(number)))


SENTINEL_CALLS: list = []


def _would_run(*args):  # reachable only if a finding list were evaluated as code
    SENTINEL_CALLS.append(args)
    return ["evaluated"]


python_expression = st.recursive(
    st.one_of(st.text(max_size=8).map(repr), st.integers().map(str), st.sampled_from(
        ["__import__('os').system('true')", "tests.test_properties._would_run()", "open('x')", "None", "...",
         "lambda: 1", "[*'ab']", "'a' 'b'", "f'{1}'", "b'x'", "{'a'}", "1j", "'Mass' + 'x'"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                            st.lists(inner, max_size=3).map(lambda xs: "(" + ", ".join(xs) + ",)"),
                            st.tuples(inner, inner).map(lambda ab: f"{{{ab[0]}: {ab[1]}}}"),
                            inner.map(lambda x: f"_would_run({x})")),
    max_leaves=8)


@SETTINGS
@given(text=st.one_of(python_expression, st.text(max_size=60)))
def test_finding_lists_are_lists_of_strings_and_nothing_is_evaluated(text, monkeypatch):
    count("finding list")
    monkeypatch.setattr(builtins, "_would_run", _would_run, raising=False)
    value = outcome(labels.parse_finding_list, text, "f.csv", "finding_categories", 2)
    assert not SENTINEL_CALLS
    assert value is None or (isinstance(value, list) and all(isinstance(v, str) and v == v.strip() and v
                                                             for v in value))


@SETTINGS
@given(names=st.lists(st.text(min_size=0, max_size=15), max_size=5))
def test_finding_list_round_trip(names):
    count("finding list round trip")
    assert labels.parse_finding_list(repr(names), "f.csv") == [n.strip() for n in names if n.strip()]


@SETTINGS
@given(n=st.integers(0, 6), form=st.sampled_from(["BI-RADS {}", "BIRADS {}", "{}", "{}.0", " BI-RADS {} ",
                                                    "bi-rads {}A"]))
def test_birads_accepts_every_documented_form(n, form):
    count("birads forms")
    assert labels.parse_birads(form.format(n), "x") == n


# --- readers on arbitrary manifests ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("prop-folder")
    for name in ("a.png", "b.png", "sub/c.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).save(folder / name)
    return folder


FOLDER_COLUMNS = ["file", "id", "patient_id", "split", "source_id", "view", "laterality", "birads", "density",
                  "findings", "extra"]
@st.composite
def one_fault(draw, valid_rows, junk=cell):
    """Valid rows, and in half the examples one field of one row replaced by junk: the reader must accept the
    first kind and refuse (one line) or accept the second — so both paths run."""
    rows = [dict(r) for r in draw(valid_rows)]
    if rows and draw(st.booleans()):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[draw(st.sampled_from(sorted(row)))] = draw(junk)
    return rows


def dict_rows_text(rows: list[dict], columns: list[str]) -> str:
    return rows_text(columns, [[r.get(c, "") for c in columns] for r in rows])


FILE_JUNK = st.sampled_from(["missing.png", "../a.png", "/etc/passwd", "", "sub", "sub/../a.png", "a.png\x00",
                             "C:\\a.png"])
folder_rows = st.lists(st.fixed_dictionaries({
    "file": st.sampled_from(["a.png", "b.png", "sub/c.png"]), "id": st.text(string.ascii_letters, max_size=6),
    "birads": st.sampled_from(["", "1", "BI-RADS 4", "5.0"]), "laterality": st.sampled_from(["", "L", "R", "left"]),
    "findings": st.sampled_from(["", "Mass", "Mass;Calcification"]), "label": st.text(max_size=5)}),
    min_size=1, max_size=3, unique_by=(lambda r: r["file"], lambda r: r["id"] or r["file"]))


@FEW
@given(text=st.one_of(table(FOLDER_COLUMNS), csv_text),
       rows=one_fault(folder_rows, junk=st.one_of(cell, FILE_JUNK)))
def test_folder_manifest_gives_records_or_one_line_error(image_folder, text, rows):
    from audit.data.readers.folder import read_manifest

    count("folder manifest")
    for body in (text, dict_rows_text(rows, ["file", "id", "birads", "laterality", "findings", "label"])):
        manifest = write(image_folder / "manifest.csv", body)
        result = outcome(read_manifest, image_folder, manifest)
        if result is not None:
            records, _ = result
            root = image_folder.resolve()
            assert all(Path(r.path).resolve().is_relative_to(root) and Path(r.path).is_file() for r in records)
            assert len({r.id for r in records}) == len(records)


NIFTI_COLUMNS = ["id", "patient_id", "split", "path", "lesion"]


@pytest.fixture(scope="module")
def nifti_root(tmp_path_factory) -> Path:
    import nibabel as nib

    root = tmp_path_factory.mktemp("prop-nifti")
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), np.eye(4)), root / "v.nii.gz")
    return root


nifti_rows = st.lists(st.fixed_dictionaries({
    "id": st.text(string.ascii_letters + string.digits, min_size=1, max_size=5),
    "patient_id": st.sampled_from(["p1", "p2"]), "split": st.sampled_from(["train", "test", "TRAIN"]),
    "path": st.sampled_from(["v.nii.gz", "missing.nii.gz"]), "lesion": st.sampled_from(["0", "1", ""])}),
    min_size=1, max_size=3, unique_by=lambda r: r["id"])


@FEW
@given(text=st.one_of(table(NIFTI_COLUMNS), csv_text),
       rows=one_fault(nifti_rows, junk=st.one_of(cell, st.sampled_from(["../v.nii.gz", "/tmp", ""]))))
def test_nifti_manifest_gives_records_or_one_line_error(nifti_root, text, rows):
    from audit.data.readers.nifti import NiftiReader

    count("nifti manifest")
    cfg = DataConfig(name="p", reader="nifti", root=nifti_root, preprocess=PreprocessConfig(shape=(8, 8, 8)))
    for body in (text, dict_rows_text(rows, NIFTI_COLUMNS)):
        write(nifti_root / "manifest.csv", body)
        result = outcome(NiftiReader().scan, cfg)
        if result is not None:
            records, skipped = result
            assert all(r.id and r.patient_id and r.split and Path(r.path).is_file() for r in records)
            assert len({r.id for r in records}) == len(records)


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    from tests.dicom_factory import write_vindr_tree

    root = tmp_path_factory.mktemp("prop-vindr")
    write_vindr_tree(root, n_studies=1)
    return root


BREAST_COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split"]
FINDING_COLUMNS = ["image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax"]
breast_rows = st.lists(st.fixed_dictionaries({
    "known": st.integers(0, 3), "series_id": st.text(max_size=4), "laterality": st.sampled_from(["L", "R", "left"]),
    "view_position": st.sampled_from(["CC", "MLO", ""]), "height": st.just("120"), "width": st.just("90"),
    "breast_birads": st.sampled_from(["BI-RADS 1", "BI-RADS 5", "", "3"]),
    "breast_density": st.sampled_from(["DENSITY A", "DENSITY D", "", "B"]),
    "split": st.sampled_from(["training", "test", "Training"])}), min_size=1, max_size=3, unique_by=lambda r: r["known"])
finding_rows = st.lists(st.fixed_dictionaries({
    "known": st.integers(0, 3),
    "finding_categories": st.one_of(st.sampled_from(["['No Finding']", "['Mass', 'Asymmetry']", "'Mass'", ""]),
                                    python_expression),
    "finding_birads": st.sampled_from(["", "BI-RADS 4"]),
    "box": st.sampled_from([("", "", "", ""), ("1", "2", "30", "40"), ("0.5", "0", "0.5", "9")])}), max_size=3)


@FEW
@given(breast=one_fault(breast_rows), findings=one_fault(finding_rows), raw=st.one_of(st.none(), csv_text))
def test_vindr_annotations_give_records_or_one_line_error(vindr_root, breast, findings, raw):
    from audit.data.readers.vindr import BREAST_CSV, FINDING_CSV, VinDrReader

    count("vindr CSVs")
    known = sorted(vindr_root.glob("images/*/*.dicom"))
    for row in breast:  # rows name real files (by index), so the full path through the reader runs
        k = row.pop("known")
        if isinstance(k, int):
            row["study_id"], row["image_id"] = known[k].parent.name, known[k].stem
    for row in findings:
        k = row.pop("known")
        row["image_id"] = known[k].stem if isinstance(k, int) else k
        box = row.pop("box")
        row.update(zip(("xmin", "ymin", "xmax", "ymax"), box if isinstance(box, tuple) else (box,) * 4))
    write(vindr_root / BREAST_CSV, raw if raw is not None else dict_rows_text(breast, BREAST_COLUMNS))
    write(vindr_root / FINDING_CSV, dict_rows_text(findings, FINDING_COLUMNS))
    cfg = DataConfig(name="v", reader="vindr", root=vindr_root, preprocess=PreprocessConfig(shape=(16, 16)))
    result = outcome(VinDrReader().scan, cfg)
    if result is not None:
        records, _ = result
        for r in records:
            assert r.split in ("train", "test", "val") and r.laterality in ("L", "R")  # VinDr: always a side
            assert r.labels.birads is None or 0 <= r.labels.birads <= 6
            assert all(math.isfinite(v) for b in r.boxes for v in (b.xmin, b.ymin, b.xmax, b.ymax))


# --- generator conditions -----------------------------------------------------------------------------------------

CONDITION_COLUMNS = ["source_id", "view", "laterality", "birads", "density", "findings", "boxes", "lesion"]
box_text = st.lists(st.tuples(*[st.floats(allow_nan=True, allow_infinity=True)] * 4), max_size=2).map(
    lambda boxes: ";".join(",".join(str(v) for v in b) + ",Mass" for b in boxes))
condition_rows = st.lists(st.fixed_dictionaries({
    "source_id": st.text(max_size=5), "view": st.sampled_from(["CC", "MLO", ""]),
    "laterality": st.sampled_from(["L", "R", ""]), "birads": st.sampled_from(["", "2", "BI-RADS 4"]),
    "density": st.sampled_from(["", "A", "DENSITY D"]), "findings": st.sampled_from(["", "Mass;Calcification"]),
    "boxes": st.sampled_from(["", "1,2,3,4,Mass", "0,0,5,5;6,6,7,8,Calc"]), "lesion": st.sampled_from(["", "1"])}),
    min_size=1, max_size=3)


@SETTINGS
@given(text=st.one_of(table(CONDITION_COLUMNS), csv_text), rows=one_fault(condition_rows, st.one_of(cell, box_text)))
def test_conditions_csv_gives_conditions_or_one_line_error(tmp_path, text, rows):
    from generators.conditions import read_conditions_csv

    count("conditions CSV")
    for body in (text, dict_rows_text(rows, CONDITION_COLUMNS)):
        conditions = outcome(read_conditions_csv, write(tmp_path / "c.csv", body))
        for c in conditions or []:
            assert c.birads is None or 0 <= c.birads <= 6
            assert c.laterality in (None, "L", "R") and c.density in (None, "A", "B", "C", "D")
            assert all(math.isfinite(v) and b.xmin <= b.xmax and b.ymin <= b.ymax
                       for b in c.boxes for v in (b.xmin, b.ymin, b.xmax, b.ymax))


coordinate = st.integers(0, 512).map(float)
condition = st.builds(
    dict, birads=st.none() | st.integers(0, 6), density=st.none() | st.sampled_from("ABCD"),
    laterality=st.none() | st.sampled_from("LR"), view=st.none() | st.sampled_from(["CC", "MLO"]),
    findings=st.lists(st.text(string.ascii_letters + " ", min_size=1, max_size=10).map(str.strip).filter(bool),
                      max_size=2).map(tuple),
    boxes=st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate).map(
        lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))), max_size=2))


@SETTINGS
@given(spec=condition)
def test_condition_rows_round_trip(spec):
    from audit.data.records import Box
    from generators.base import Condition
    from generators.conditions import condition_from_row, condition_to_row

    count("condition round trip")
    original = Condition(birads=spec["birads"], density=spec["density"], laterality=spec["laterality"],
                         view=spec["view"], findings=spec["findings"],
                         boxes=tuple(Box(*b, category="Mass") for b in spec["boxes"]))
    assert condition_from_row(condition_to_row(original), Path("c.csv")) == original


# --- config YAML --------------------------------------------------------------------------------------------------

scalar = st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 6), st.floats(allow_nan=True), st.text(max_size=8))
yaml_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=10)
data_config_like = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=6), yaml_value), "reader": st.sampled_from(["vindr", "nifti", "folder", "x"]),
     "preprocess": st.one_of(yaml_value, st.fixed_dictionaries(
         {"shape": st.lists(st.integers(-2, 10 ** 6), max_size=4)},
         optional={"intensity_percentiles": st.lists(st.floats(-10, 200), max_size=3),
                   "spacing_mm": yaml_value, "crop_to_breast": yaml_value}))},
    optional={"modality": yaml_value, "manifest": yaml_value, "extra_key": yaml_value})


@SETTINGS
@given(document=st.one_of(data_config_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                          st.text(max_size=200), yaml_value.map(lambda v: yaml.safe_dump(v))))
def test_dataset_yaml_gives_a_config_or_one_line_error(document):
    count("dataset YAML")
    data = outcome(parse_yaml_text, document, "d.yaml")
    if data is not None or document.strip() in ("", "null", "~"):
        config = outcome(validate, DataConfig, data, "d.yaml")
        assert config is None or (isinstance(config, DataConfig) and config.preprocess.ndim in (2, 3))


generator_like = st.fixed_dictionaries(
    {"kind": mostly(st.sampled_from(["ldm2d", "ldm3d"]), st.sampled_from(["gan", "", 3]))},
    optional={"shape": st.lists(st.integers(0, 64), max_size=4),
              "unet": mostly(st.integers(1, 3).flatmap(lambda n: st.fixed_dictionaries(
                  {"channels": st.lists(st.integers(1, 64), min_size=n, max_size=n),
                   "attention_levels": st.lists(st.booleans(), min_size=n, max_size=n).map(
                       lambda levels: [True, *levels[1:]])})), yaml_value),
              "sampling": mostly(st.fixed_dictionaries({"num_inference_steps": st.integers(1, 50)}), yaml_value),
              "bogus": yaml_value})


@SETTINGS
@given(document=st.one_of(generator_like.map(yaml.safe_dump), st.text(max_size=120)))
def test_generator_yaml_gives_a_config_or_one_line_error(tmp_path, document):
    from generators.config import GeneratorConfig, load_generator_config

    count("generator YAML")
    config = outcome(load_generator_config, str(write(tmp_path / "g.yaml", document)))
    assert config is None or isinstance(config, GeneratorConfig)


# --- gates files, run configurations, --option values (audit run) ------------------------------------------------

metric_name = mostly(st.sampled_from(["replicas/flagged_share", "membership/best/auc", "fidelity/fid_over_floor",
                                      "utility/gap", "reid/sanity/verification_auc"]),
                     st.one_of(st.text(max_size=12), st.sampled_from(["copies/share", "/", "replicas", ""])))
gate_like = st.fixed_dictionaries(
    {"metric": mostly(metric_name, yaml_value), "op": mostly(st.sampled_from(["<", "<=", ">", ">="]), yaml_value),
     "threshold": mostly(st.floats(allow_nan=True, allow_infinity=True), yaml_value)},
    optional={"on": mostly(st.sampled_from(["value", "ci_low", "ci_high"]), yaml_value),
              "severity": mostly(st.sampled_from(["fail", "warn"]), yaml_value), "title": yaml_value,
              "extra": yaml_value})
gates_like = st.fixed_dictionaries(
    {"gates": mostly(st.lists(gate_like, max_size=3), yaml_value)},
    optional={"version": mostly(st.just(1), yaml_value), "description": yaml_value,
              "required_stages": mostly(st.lists(st.sampled_from(["fidelity", "utility", "reid", "membership",
                                                                  "replicas", "copies"]), max_size=3), yaml_value),
              "gate": yaml_value})


@SETTINGS
@given(document=st.one_of(gates_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=160)))
def test_gates_yaml_gives_a_gate_set_or_one_line_error(tmp_path, document):
    from audit.gates import GateSet, check_stage_names, load_gates
    from audit.stages import STAGES

    count("gates YAML")
    path = write(tmp_path / "gates.yaml", document)
    loaded = outcome(load_gates, path)
    if loaded is not None:
        assert isinstance(loaded.gates, GateSet) and loaded.gates.gates
        assert all(math.isfinite(g.threshold) for g in loaded.gates.gates)
        outcome(check_stage_names, loaded.gates, set(STAGES.names()), str(path))


run_config_like = st.fixed_dictionaries(
    {}, optional={"n": mostly(st.integers(-2, 10 ** 6), yaml_value), "seed": mostly(st.integers(-2, 99), yaml_value),
                  "stages": mostly(st.sampled_from(["replicas", "fidelity,replicas", "generate,reid", "copies", ""]),
                                   yaml_value),
                  "batch_size": yaml_value, "threads": yaml_value, "device": yaml_value, "colour": yaml_value,
                  "generate": mostly(st.fixed_dictionaries({}, optional={"steps": st.integers(-1, 50),
                                                                         "batch_size": st.integers(-1, 9)}),
                                     yaml_value),
                  "replicas": mostly(st.fixed_dictionaries({}, optional={"quantile": st.floats(allow_nan=True),
                                                                         "scorers": st.lists(st.sampled_from(
                                                                             ["ncc", "ssim", "nope"]), max_size=2)}),
                                     yaml_value),
                  "membership": mostly(st.fixed_dictionaries({}, optional={"n_boot": st.integers(-5, 50),
                                                                           "attacks": st.lists(st.sampled_from(
                                                                               ["loss", "dcr", "x"]), max_size=2)}),
                                       yaml_value)})


@FEW
@given(document=st.one_of(run_config_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=120)))
def test_run_config_yaml_gives_a_configuration_or_one_line_error(tmp_path, document):
    from audit.run_config import RunConfig, resolve_run_config

    count("run config YAML")
    config = outcome(resolve_run_config, {"model": "m", "data": "d"}, write(tmp_path / "run.yaml", document))
    assert config is None or (isinstance(config, RunConfig) and config.options.n in (None,) or config.options.n >= 1)


@SETTINGS
@given(item=st.one_of(st.text(max_size=40), st.builds(lambda n, k, v: f"{n}.{k}={v}", st.text(max_size=6),
                                                      st.text(max_size=6), st.text(max_size=30))))
def test_option_assignment_gives_values_or_one_line_error(item, monkeypatch):
    from audit.registry import parse_option_assignments

    count("--option NAME.KEY=VALUE")
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    parsed = outcome(parse_option_assignments, [item])
    if parsed is not None:
        ((name, values),) = parsed.items()
        assert name and all(isinstance(k, str) and k for k in values)
        assert all(v is None or isinstance(v, (str, int, float, bool, list, dict)) for v in values.values())
