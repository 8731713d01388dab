"""Who is a member: the generator's training images; who is not: held-out real images, equal in number and
matched on labels, so that an attack that separates them measures membership, not a difference of distribution.

- `checkpoint_member_ids(generator)`: our LDM checkpoints list their training records (training_conditions.csv,
  `source_id` = the record id); other models have no list (the user names the members).
- `match_pairs(members, nonmembers, fields, seed)`: pairs one member with one non-member, as many pairs as the
  smaller side has; the larger side is subsampled. Pairs agree on all `fields` where possible; the rest agree on
  as many leading fields as possible (fields are in priority order). The report says how many pairs matched on
  which fields — never a silent mismatch.
- `check_disjoint`: a member that is also a non-member (same record, same file or the same pixels) is an error.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.data.records import Record
from audit.errors import AuditInputError
from generators.base import Condition

# mammograms: view changes the image most (CC vs MLO with the pectoral muscle), then density, then BI-RADS
MAMMO_MATCH_FIELDS = ("view", "density", "birads")


def checkpoint_member_ids(generator) -> list[str] | None:
    """The record ids a synth-audit checkpoint was trained on; None when the model does not list them."""
    conditions = getattr(generator, "training_conditions", None)
    if not conditions:
        return None
    return [c.source_id for c in conditions if c.source_id]


def label_value(record: Record, name: str) -> str | None:
    return Condition.from_record(record).value(name)


def default_match_fields(records: Sequence[Record], generator=None) -> tuple[str, ...]:
    """Mammograms: view, density, BI-RADS. Otherwise the generator's conditioning fields, else the labels with
    2..32 distinct values (a 3D manifest's lesion, age group, ...)."""
    from generators.conditions import auto_fields

    if any(r.view for r in records):
        return MAMMO_MATCH_FIELDS
    vocabulary = getattr(generator, "vocabulary", None)
    if vocabulary is not None and vocabulary.fields:
        return tuple(vocabulary.fields)
    fields = auto_fields([Condition.from_record(r) for r in records])
    return tuple(f for f in fields if f not in ("laterality", "finding") or any(r.view for r in records))


@dataclass
class Matching:
    members: list[Record]
    nonmembers: list[Record]  # nonmembers[i] is the partner of members[i]
    fields: tuple[str, ...]
    matched_on: list[int]  # per pair: how many leading fields agree
    available: dict[str, int] = field(default_factory=dict)  # members / non-members offered

    @property
    def n_pairs(self) -> int:
        return len(self.members)

    def sample(self, n: int, seed: int) -> "Matching":
        """A random subset of n pairs (seeded), in their original order (the cost cap of large sets)."""
        keep = np.sort(np.random.default_rng([int(seed) % (1 << 63), 29]).permutation(self.n_pairs)[:n])
        return Matching([self.members[i] for i in keep], [self.nonmembers[i] for i in keep], self.fields,
                        [self.matched_on[i] for i in keep], {**self.available, "capped_at": n})

    def summary(self) -> dict:
        levels = {}
        for depth in range(len(self.fields), -1, -1):
            name = ",".join(self.fields[:depth]) if depth else "none"
            levels[name] = int(sum(m == depth for m in self.matched_on))
        return {"fields": list(self.fields), "pairs": self.n_pairs,
                "matched_exactly": int(sum(m == len(self.fields) for m in self.matched_on)),
                "matched_on_leading_fields": levels, "offered": dict(self.available),
                "unused": {"members": self.available.get("members", 0) - self.n_pairs,
                           "nonmembers": self.available.get("nonmembers", 0) - self.n_pairs}}


def match_pairs(members: Sequence[Record], nonmembers: Sequence[Record], fields: Sequence[str],
                seed: int = 0) -> Matching:
    """Label-matched pairs. The smaller side is kept whole; each of its records gets a partner from the larger
    side, first among records equal on all fields, then on the first len−1 fields, … (random among equals,
    seeded). Greedy per level, which maximises the number of exact matches."""
    fields = tuple(fields)
    swap = len(members) > len(nonmembers)
    anchors, pool = (list(nonmembers), list(members)) if swap else (list(members), list(nonmembers))
    rng = np.random.default_rng([int(seed) % (1 << 63), 17])
    values = {id(r): tuple(label_value(r, f) for f in fields) for r in (*anchors, *pool)}
    pool_order = [pool[i] for i in rng.permutation(len(pool))]
    partner: dict[int, Record] = {}
    depth_of: dict[int, int] = {}
    used: set[int] = set()
    for depth in range(len(fields), -1, -1):
        by_key: dict[tuple, list[Record]] = defaultdict(list)
        for r in pool_order:
            if id(r) not in used:
                by_key[values[id(r)][:depth]].append(r)
        for a in anchors:
            if id(a) in partner:
                continue
            candidates = by_key.get(values[id(a)][:depth])
            if candidates:
                chosen = candidates.pop(0)
                used.add(id(chosen))
                partner[id(a)], depth_of[id(a)] = chosen, depth
    kept = [a for a in anchors if id(a) in partner]
    mine, theirs = kept, [partner[id(a)] for a in kept]
    m, n = (theirs, mine) if swap else (mine, theirs)
    return Matching(m, n, fields, [depth_of[id(a)] for a in kept],
                    {"members": len(members), "nonmembers": len(nonmembers)})


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


def check_disjoint(members: Sequence[Record], nonmembers: Sequence[Record], member_digests: Sequence[str] = (),
                   nonmember_digests: Sequence[str] = (), where: str = "--members/--nonmembers",
                   by_id: bool = True) -> dict:
    """Members and non-members must not share a record, a file or an image (identical pixels). Returns the
    number of patients on both sides (allowed, reported: another view of a member's patient is a harder
    non-member). `by_id=False` for two folders, whose ids are file names and may repeat by chance."""
    same_id = ({r.id for r in members} & {r.id for r in nonmembers}) if by_id else set()
    if same_id:
        raise AuditInputError(where, f"{len(same_id)} record(s) are both members and non-members "
                                     f"(e.g. '{sorted(same_id)[0]}')")
    same_file = {str(Path(r.path).resolve()) for r in members} & {str(Path(r.path).resolve()) for r in nonmembers}
    if same_file:
        raise AuditInputError(where, f"{len(same_file)} file(s) are both members and non-members "
                                     f"(e.g. {sorted(same_file)[0]})")
    same_pixels = set(member_digests) & set(nonmember_digests)
    if same_pixels:
        raise AuditInputError(where, f"{len(same_pixels)} image(s) appear among both members and non-members "
                                     "(identical pixels)")
    if not by_id:
        return {}
    shared_patients = {r.patient_id for r in members} & {r.patient_id for r in nonmembers}
    return {"patients_on_both_sides": len(shared_patients)}
