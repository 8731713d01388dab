"""Release sign-off: gates over a report's figures → one outcome per gate and one verdict.

A gate says what must hold for a release: ``{metric, op, threshold, on: value|ci_low|ci_high, severity}``, e.g.
"the upper end of the replica share's CI is at most 5 %". Outcomes, fail-closed:

- **pass**: the checked quantity (`on`) satisfies the rule.
- **fail** (severity fail) / **warn** (severity warn): *evidence of a problem* — the point estimate itself breaks
  the rule (for a gate on the value, the value breaks it).
- **warn, inconclusive**: the gate is on a CI bound, the estimate is on the right side but the bound is not —
  too little evidence to pass at this sample size. The outcome says how many samples would likely suffice.
- **error**: the figure is missing (its stage failed, was skipped, was not run, or did not report it) or
  undefined (NaN). Never a silent pass.

Verdict: ERROR if any stage raised, a required stage did not run, or a gate is in error; else FAIL if a gate
failed; else WARN if a gate warned; else PASS. Exit codes 0 PASS/WARN, 1 FAIL, 2 ERROR.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import field_validator, model_validator

from audit.artifacts import stable_hash
from audit.config import StrictModel, load_preset, validate
from audit.errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK

VERDICTS = ("PASS", "WARN", "FAIL", "ERROR")
EXIT_CODES = {"PASS": EXIT_OK, "WARN": EXIT_OK, "FAIL": EXIT_FAIL, "ERROR": EXIT_ERROR}
GATE_STATUSES = ("pass", "warn", "fail", "error")

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
OP_WORDS = {"<": "below", "<=": "at most", ">": "above", ">=": "at least"}
ON_WORDS = {"value": "the estimate", "ci_low": "the lower end of its confidence interval",
            "ci_high": "the upper end of its confidence interval"}


class Gate(StrictModel):
    metric: str  # full report name, `<stage>/<figure>`
    op: Literal["<", "<=", ">", ">="]
    threshold: float
    on: Literal["value", "ci_low", "ci_high"] = "value"
    severity: Literal["fail", "warn"] = "fail"
    title: str | None = None  # the check in plain words (the report's gate table)
    why: str | None = None  # why this limit (shown beside the outcome)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True; the gate syntax is `on: ci_high`
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("metric")
    @classmethod
    def _stage_and_figure(cls, v: str) -> str:
        stage, _, figure = v.partition("/")
        if not stage.strip() or not figure.strip() or v != v.strip():
            raise ValueError("must be '<stage>/<figure>', e.g. replicas/flagged_share")
        return v

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @property
    def stage(self) -> str:
        return self.metric.partition("/")[0]

    @property
    def figure(self) -> str:
        return self.metric.partition("/")[2]

    def rule_text(self) -> str:
        return f"{self.on} {self.op} {self.threshold:g}"


class GateSet(StrictModel):
    version: Literal[1] = 1
    description: str = ""
    # stages that must have run for a PASS; None = every stage a gate refers to
    required_stages: tuple[str, ...] | None = None
    gates: tuple[Gate, ...]

    @field_validator("gates")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("give at least one gate (an empty gate list would pass anything)")
        return v

    @model_validator(mode="after")
    def _unique_required(self):
        if self.required_stages is not None and len(set(self.required_stages)) != len(self.required_stages):
            raise ValueError("required_stages names a stage twice")
        return self

    def required(self) -> tuple[str, ...]:
        if self.required_stages is not None:
            return tuple(self.required_stages)
        return tuple(dict.fromkeys(g.stage for g in self.gates))

    def digest(self) -> str:
        """Hash of the validated content (comments and key order do not matter)."""
        return stable_hash(self.model_dump(mode="json"), length=16)


@dataclass(frozen=True)
class LoadedGates:
    gates: GateSet
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "hash": self.gates.digest(), "description": self.gates.description,
                "required_stages": list(self.gates.required())}


def load_gates(name_or_path: str | Path) -> LoadedGates:
    """A gate set by preset name (configs/gates/<name>.yaml) or path; errors name the file and the key."""
    from audit.errors import AuditInputError

    data, source = load_preset("gates", name_or_path)
    unknown = sorted(set(data) - set(GateSet.model_fields)) if isinstance(data, dict) else []
    if unknown:  # named before any missing key: `gate:` for `gates:` is a typo, not a missing list
        raise AuditInputError(source, f"unknown key '{unknown[0]}' (known: {', '.join(GateSet.model_fields)})")
    return LoadedGates(validate(GateSet, data, source), source)


def check_stage_names(gates: GateSet, known: set[str], source: str) -> None:
    """Gates naming a stage the suite does not have are input errors (a typo would otherwise be an ERROR verdict
    only after the whole audit ran)."""
    from audit.errors import AuditInputError

    for name in list(gates.required()) + [g.stage for g in gates.gates]:
        if name not in known:
            raise AuditInputError(source, f"unknown stage '{name}' (known: {', '.join(sorted(known))})")


# --------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class StageState:
    """What the gates need to know about a stage: ok | skipped | error | not_requested, and why."""

    status: str
    reason: str | None = None
    skipped_parts: Mapping[str, str] = field(default_factory=dict)
    figure_names: tuple[str, ...] = ()


@dataclass
class GateOutcome:
    gate: Gate
    status: str  # pass | warn | fail | error
    message: str
    observed: float | None = None
    estimate: dict[str, Any] | None = None
    inconclusive: bool = False
    n_needed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.gate.model_dump(mode="json"), "status": self.status, "message": self.message,
                "observed": self.observed, "estimate": self.estimate, "inconclusive": self.inconclusive,
                "n_needed": self.n_needed}


def fmt(x: float | None) -> str:
    """Three significant digits, no exponent for everyday magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "undefined"
    if x == 0:
        return "0"
    if 1e-4 <= abs(x) < 1e5:
        digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
        return f"{x:.{digits}f}"
    return f"{x:.3g}"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def missing_reason(gate: Gate, stages: Mapping[str, StageState]) -> str:
    state = stages.get(gate.stage)
    if state is None or state.status == "not_requested":
        return f"stage '{gate.stage}' was not run (left out by --stages)"
    if state.status == "error":
        return f"stage '{gate.stage}' failed: {state.reason}"
    if state.status == "skipped":
        return f"stage '{gate.stage}' was skipped: {state.reason}"
    for part, why in state.skipped_parts.items():
        if gate.figure == part or gate.figure.startswith(part.rstrip("/") + "/"):
            return f"part '{part}' of stage '{gate.stage}' was skipped: {why}"
    known = ", ".join(state.figure_names) or "none"
    return f"stage '{gate.stage}' reported no figure '{gate.figure}' (it reported: {known})"


def wilson_upper_lower(p: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson interval of a proportion p at a (possibly fractional) sample size n."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def samples_needed(gate: Gate, estimate: Mapping[str, Any]) -> int | None:
    """The sample size at which the gate's CI bound would likely pass, the estimate staying where it is.

    An estimate, stated as one: Wilson intervals are inverted at the same proportion; other intervals (bootstrap)
    are scaled by 1/√n. None when no sample size can make the bound pass (the estimate sits on the threshold)."""
    value, bound, n = _number(estimate.get("value")), _number(estimate.get(gate.on)), estimate.get("n")
    if value is None or bound is None or not n:
        return None
    margin = abs(gate.threshold - value)
    if margin == 0:
        return None
    passes = OPS[gate.op]
    method = str(estimate.get("method", ""))
    if method.startswith("wilson") and 0 <= value <= 1:
        side = 1 if gate.on == "ci_high" else 0
        lo, hi = int(n), int(n)
        while not passes(wilson_upper_lower(value, hi)[side], gate.threshold):
            lo, hi = hi, hi * 2
            if hi > 10 ** 9:
                return None
        while hi - lo > 1:  # smallest n whose bound passes
            mid = (lo + hi) // 2
            if passes(wilson_upper_lower(value, mid)[side], gate.threshold):
                hi = mid
            else:
                lo = mid
        return hi
    half_width = abs(bound - value)
    return int(math.ceil(round(n * (half_width / margin) ** 2, 6)))  # round: 242.00000001 is 242


def evaluate_gate(gate: Gate, figures: Mapping[str, Any], stages: Mapping[str, StageState]) -> GateOutcome:
    """One gate against the report's figures (full names → Estimate dicts)."""
    title = gate.title or gate.metric
    raw = figures.get(gate.metric)
    if raw is None:
        return GateOutcome(gate, "error", f"{title}: no figure — {missing_reason(gate, stages)}")
    estimate = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    observed, value = _number(estimate.get(gate.on)), _number(estimate.get("value"))
    if observed is None or value is None:
        return GateOutcome(gate, "error", f"{title}: the figure is undefined ({estimate.get('method', '')})",
                           observed, estimate)
    passes = OPS[gate.op]
    rule = f"must be {OP_WORDS[gate.op]} {fmt(gate.threshold)}"
    what = f"{title}: {ON_WORDS[gate.on]} is {fmt(observed)}" + ("" if gate.on == "value" else
                                                                   f" (estimate {fmt(value)})")
    if passes(observed, gate.threshold):
        return GateOutcome(gate, "pass", f"{what}; it {rule} — passes.", observed, estimate)
    if gate.on == "value" or not passes(value, gate.threshold):
        status = gate.severity
        return GateOutcome(gate, status, f"{what}; it {rule} — "
                                         f"{'evidence of a problem' if status == 'fail' else 'a warning'}.",
                           observed, estimate)
    n_needed = samples_needed(gate, estimate)
    n = estimate.get("n")
    more = (f"about {n_needed} samples would likely suffice (an estimate from how the interval narrows with n)"
            if n_needed else "no sample size would settle it: the estimate sits on the threshold")
    return GateOutcome(gate, "warn", f"{what}; it {rule} — inconclusive: the estimate is within the limit but "
                                     f"the interval is too wide at n = {n}; {more}.",
                       observed, estimate, inconclusive=True, n_needed=n_needed)


@dataclass
class Verdict:
    verdict: str
    reasons: list[str]
    outcomes: list[GateOutcome]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def decide(gates: GateSet, figures: Mapping[str, Any], stages: Mapping[str, StageState]) -> Verdict:
    outcomes = [evaluate_gate(g, figures, stages) for g in gates.gates]
    errors: list[str] = []
    for name, state in stages.items():
        if state.status == "error":
            errors.append(f"stage '{name}' failed: {state.reason}")
    for name in gates.required():
        state = stages.get(name)
        if state is None or state.status == "not_requested":
            errors.append(f"required stage '{name}' was not run (left out by --stages)")
        elif state.status == "skipped":
            errors.append(f"required stage '{name}' was skipped: {state.reason}")
    errors += [o.message for o in outcomes if o.status == "error"]
    failed = [o.message for o in outcomes if o.status == "fail"]
    if errors:  # the failures found so far are said too: an incomplete audit may already show a problem
        return Verdict("ERROR", list(dict.fromkeys(errors + failed)), outcomes)
    if failed:
        return Verdict("FAIL", failed, outcomes)
    warned = [o.message for o in outcomes if o.status == "warn"]
    if warned:
        return Verdict("WARN", warned, outcomes)
    return Verdict("PASS", ["every gate passed and every required stage ran"], outcomes)
