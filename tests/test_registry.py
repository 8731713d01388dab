"""The one registry pattern: names → components with declared, validated parameters."""

import pytest

from audit.artifacts import ArtifactCache, records_fingerprint
from audit.data.records import Labels, Record
from audit.errors import AuditInputError
from audit.jsonio import json_safe, write_json_atomic
from audit.registry import NoParams, Params, Registry, Runtime, parse_option_assignments


class Scaled:
    class Params(Params):
        k: int = 10
        factor: float = 1.0

    def __init__(self, params, runtime):
        self.params, self.runtime = params, runtime


class Bare:
    def __init__(self, params, runtime):
        self.params = params


def make_registry() -> Registry:
    reg = Registry("scorer")
    reg.register("scaled", Scaled, "a scorer with parameters")
    reg.register("bare", Bare)
    reg.register("lazy", "tests.test_registry:Scaled")
    reg.register("absent", "attacks.no_such_module:Thing")
    reg.register("needs_pkg", "tests.registry_needs_missing_package:Thing")
    return reg


def test_create_validates_and_passes_runtime():
    reg = make_registry()
    comp = reg.create("scaled", {"k": "20"}, Runtime(device="meta", batch_size=3))
    assert comp.params.k == 20 and comp.params.factor == 1.0
    assert comp.runtime.device == "meta" and comp.runtime.batch_size == 3
    assert isinstance(reg.create("bare").params, NoParams)
    assert reg.create("lazy").params.k == 10


def test_unknown_name_lists_known():
    with pytest.raises(AuditInputError, match=r"unknown scorer 'nope' \(known: absent, bare, lazy, needs_pkg, scaled\)"):
        make_registry().create("nope")


def test_undeclared_parameter_is_an_error_naming_declared_ones():
    with pytest.raises(AuditInputError, match=r"scorer 'scaled': unknown parameter 'device' \(declared: factor, k\)"):
        make_registry().create("scaled", {"device": "cuda"})
    with pytest.raises(AuditInputError, match=r"scorer 'bare': unknown parameter 'k' \(declared: none\)"):
        make_registry().create("bare", {"k": 1})


def test_bad_value_names_the_key():
    with pytest.raises(AuditInputError, match=r"scorer 'scaled': bad value for 'k'"):
        make_registry().create("scaled", {"k": "many"})


def test_missing_module_and_missing_package():
    reg = make_registry()
    with pytest.raises(AuditInputError, match="scorer 'absent' is not available"):
        reg.create("absent")
    with pytest.raises(AuditInputError, match="needs the missing package 'surely_not_installed_pkg'"):
        reg.create("needs_pkg")


def test_parse_names():
    reg = make_registry()
    assert reg.parse_names("scaled, bare", "--scorers") == ["scaled", "bare"]
    for text, msg in (("", "give at least one"), ("scaled,x", "unknown scorer 'x'"), ("bare,bare", "named twice")):
        with pytest.raises(AuditInputError, match=msg):
            reg.parse_names(text, "--scorers")


def test_parse_option_assignments():
    got = parse_option_assignments(["ncc_reg.k=20", "feature.weights=/w.safetensors", "a.grid=[1, 2]", "a.on=true"])
    assert got == {"ncc_reg": {"k": 20}, "feature": {"weights": "/w.safetensors"}, "a": {"grid": [1, 2], "on": True}}
    with pytest.raises(AuditInputError, match="expected NAME.KEY=VALUE"):
        parse_option_assignments(["k=20"])


def test_describe_lists_parameters():
    reg = Registry("attack")
    reg.register("scaled", Scaled, "summary")
    assert reg.describe() == {"scaled": {"summary": "summary", "params": {"k": 10, "factor": 1.0}}}


def test_artifact_cache_builds_once(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text("built")

    first = cache.get_or_build("thing", {"data": "abc", "k": 1}, build)
    second = cache.get_or_build("thing", {"data": "abc", "k": 1}, build)
    third = cache.get_or_build("thing", {"data": "abc", "k": 2}, build)
    assert first == second != third
    assert len(calls) == 2 and cache.builds == 2 and cache.hits == 1
    assert (first / "x.txt").read_text() == "built" and (first / "key.json").is_file()


def test_artifact_cache_failed_build_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_build("thing", {"k": 1}, broken)
    assert cache.get("thing", {"k": 1}) is None
    assert list((tmp_path / "artifacts" / "thing").iterdir()) == []


def test_records_fingerprint_changes_with_labels_and_files(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"1")
    rec = Record(id="a", patient_id="p", split="train", modality="MG", path=str(f), labels=Labels(birads=1))
    base = records_fingerprint([rec])
    assert records_fingerprint([rec]) == base
    assert records_fingerprint([Record(**{**rec.__dict__, "labels": Labels(birads=2)})]) != base
    f.write_bytes(b"22")
    assert records_fingerprint([rec]) != base


def test_json_safe_and_atomic_write(tmp_path):
    import numpy as np

    data = {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(3), "d": (tmp_path,)}
    assert json_safe(data) == {"a": None, "b": 1.5, "c": [0, 1, 2], "d": [str(tmp_path)]}
    path = write_json_atomic(tmp_path / "out" / "x.json", data)
    assert path.read_text().startswith("{") and not list(path.parent.glob(".*tmp"))
