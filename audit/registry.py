"""One registry pattern for everything the user chooses by name: replica scorers, encoders, segmenters, fidelity
extractors, membership and re-identification attacks, generator loaders, audit stages.

A registry maps a name to a *component*: a class (or factory) that declares its parameters as a pydantic model
``Params`` and is built as ``component(params, runtime)``. Declared parameters say what the component *is* (a
grid, a k, a checkpoint path) and go into its ``describe()``; the `Runtime` says where it runs (device, batch
size, seed, progress) and is given to every component alike, so a runtime option can never be silently dropped
by one component and honoured by another.

Everything is validated before any heavy work: an unknown name, an undeclared parameter or a wrong type is one
`AuditInputError` line listing what exists, e.g.
``unknown scorer 'nc' (known: ncc, ncc_reg, ssim)`` or
``scorer 'ncc_reg': unknown parameter 'kk' (declared: flips, k, shortlist_side)``.

Targets are registered lazily as ``"module:attribute"`` strings, so listing names (``audit --help``) imports
nothing heavy, and a component whose optional dependency is missing fails with the package's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.config import parse_yaml_text
from audit.errors import AuditInputError

T = TypeVar("T")


class Params(BaseModel):
    """Base of every component's declared parameters: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class NoParams(Params):
    """For components that declare nothing."""


@dataclass(frozen=True)
class Runtime:
    """Where and how a component runs. Never changes a result beyond floating-point reordering: results are
    batch-size independent and seed-deterministic by contract."""

    device: str = "cpu"
    batch_size: int = 64
    seed: int = 0
    progress: bool = False
    cache_dir: Path | None = None  # shared cache of data-only artefacts (None: the suite's default)
    executor: Any = None  # audit.parallel executor of the per-image passes (None: in process)

    def with_(self, **changes: Any) -> "Runtime":
        return replace(self, **changes)


def format_validation_error(err: ValidationError) -> str:
    """The first pydantic error as `unknown key 'a.b'` / `missing key 'a'` / `bad value for 'a': ...`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if first["type"] == "missing":
        return f"missing key '{key}'"
    return f"bad value for '{key}': {first['msg']}"


@dataclass
class Entry:
    name: str
    target: str | Any  # "module:attribute" (imported on first use) or the component itself
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. a loader's `recognises` predicate
    _loaded: Any = None

    def load(self, kind: str) -> Any:
        if self._loaded is not None:
            return self._loaded
        if not isinstance(self.target, str):
            self._loaded = self.target
            return self._loaded
        module_name, _, attribute = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                raise AuditInputError(None, f"{kind} '{self.name}' is not available in this version "
                                            f"(module {module_name} is missing)") from None
            raise AuditInputError(None, f"{kind} '{self.name}' needs the missing package '{err.name}' "
                                        f"(install it, or the extra that provides it)") from None
        try:
            self._loaded = getattr(module, attribute)
        except AttributeError:
            raise AuditInputError(None, f"{kind} '{self.name}': {module_name} has no '{attribute}'") from None
        return self._loaded


class Registry(Generic[T]):
    """Names → components with declared, validated parameters. `kind` names the family in messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    # --- registration ----------------------------------------------------------------------------------------
    def register(self, name: str, target: str | Any, summary: str = "", **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = Entry(name, target, summary, dict(meta))

    def __call__(self, name: str, summary: str = "", **meta: Any) -> Callable[[Any], Any]:
        """Decorator form: ``@SCORERS("ncc")`` above a class."""
        def decorate(component):
            self.register(name, component, summary, **meta)
            return component
        return decorate

    # --- lookup ----------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise AuditInputError(None, f"unknown {self.kind} '{name}' (known: {', '.join(self.names()) or 'none'})")
        return self._entries[name]

    def component(self, name: str) -> Any:
        return self.entry(name).load(self.kind)

    def params_model(self, name: str) -> type[Params]:
        component = self.component(name)
        model = getattr(component, "Params", None)
        if model is None:
            return NoParams
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{self.kind} '{name}': Params must be a pydantic model")
        return model

    # --- validation and construction -------------------------------------------------------------------------
    def params(self, name: str, options: Mapping[str, Any] | BaseModel | None = None) -> Params:
        """The validated parameters of `name`; an undeclared option or a bad value is one line naming both."""
        model = self.params_model(name)
        if isinstance(options, model):
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        options = dict(options or {})
        try:
            return model.model_validate(options)
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                declared = ", ".join(sorted(model.model_fields)) or "none"
                raise AuditInputError(None, f"{self.kind} '{name}': unknown parameter '{key}' "
                                            f"(declared: {declared})") from None
            raise AuditInputError(None, f"{self.kind} '{name}': {format_validation_error(err)}") from None

    def create(self, name: str, options: Mapping[str, Any] | BaseModel | None = None,
               runtime: Runtime | None = None) -> T:
        """A fresh component: parameters validated first, then `component(params, runtime)`."""
        params = self.params(name, options)
        return self.component(name)(params, runtime or Runtime())

    def parse_names(self, text: str | Iterable[str], flag: str) -> list[str]:
        """'a, b' → ['a', 'b']; empty, unknown or repeated names are input errors naming the flag."""
        names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n and n.strip()]
        if not names:
            raise AuditInputError(None, f"{flag}: give at least one {self.kind}")
        for n in names:
            if n not in self:
                raise AuditInputError(None, f"{flag}: unknown {self.kind} '{n}' (known: {', '.join(self.names())})")
        if len(set(names)) != len(names):
            raise AuditInputError(None, f"{flag}: a {self.kind} is named twice")
        return names

    def describe(self) -> dict[str, dict[str, Any]]:
        """name → summary and declared parameters with their defaults (imports every component)."""
        out = {}
        for name in self.names():
            model = self.params_model(name)
            out[name] = {"summary": self._entries[name].summary,
                         "params": {k: (None if f.is_required() else f.default)
                                    for k, f in model.model_fields.items()}}
        return out


def parse_option_assignments(items: Iterable[str], flag: str = "--option") -> dict[str, dict[str, Any]]:
    """['ncc_reg.k=20', 'feature.weights=/w.safetensors'] → {'ncc_reg': {'k': 20}, 'feature': {...}}.

    Values are read by the config files' YAML reader (`audit.config.parse_yaml_text`: safe loader, no tag builds an
    object, size and alias expansion bounded): 20 → int, 0.5 → float, true → bool, [1, 2] → list; never
    evaluated."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or not name.strip() or not key.strip():
            raise AuditInputError(None, f"{flag}: expected NAME.KEY=VALUE, got '{item}'")
        try:
            parsed = parse_yaml_text(value, flag) if value.strip() else None
        except AuditInputError as err:
            raise AuditInputError(None, f"{flag}: cannot read the value of '{item}' ({err.problem})") from None
        out.setdefault(name.strip(), {})[key.strip()] = parsed
    return out
