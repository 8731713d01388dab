"""What `audit attack mia` attacks: the model, its members and non-members, its samples, the re-id embedding —
from folders (the fixed folder contract) or from a dataset preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attacks.membership.members import checkpoint_member_ids
from attacks.membership.pipeline import AttackTarget, LazySamples, is_conditional, whitebox_access
from audit.errors import AuditInputError

BLACK_BOX = ("dcr", "dcr_embed")


@dataclass
class PreparedInputs:
    generator: Any
    members: Any
    nonmembers: Any
    target: AttackTarget
    by_id: bool
    name_of: Callable
    sources: dict = field(default_factory=dict)


def read_id_list(path: Path, flag: str) -> list[str]:
    from audit.data.csvio import read_csv_rows

    rows = read_csv_rows(path, f"{flag} CSV")
    column = next((c for c in ("id", "source_id") if c in rows[0]), None)
    if column is None:
        raise AuditInputError(path, f"{flag} CSV needs a column 'id' (record ids of the dataset)")
    return [r[column].strip() for r in rows if (r.get(column) or "").strip()]


def open_candidates(spec: str, flag: str, shape, dataset=None):
    """(ImageDataset, from_folder): a folder of images at `shape`, or a CSV of record ids of `dataset`."""
    from audit.data.readers.folder import open_folder

    path = Path(spec)
    if path.is_dir():
        return open_folder(path, shape=tuple(shape)), True
    if path.is_file() and path.suffix.lower() == ".csv":
        if dataset is None:
            raise AuditInputError(flag, "a CSV of record ids needs --data (the dataset the ids belong to)")
        ids = read_id_list(path, flag)
        subset = dataset.subset(ids=ids)
        missing = len(set(ids)) - len(subset)
        if missing:
            raise AuditInputError(path, f"{missing} of {len(set(ids))} listed ids are not records of dataset "
                                        f"'{dataset.name}'")
        return subset, False
    raise AuditInputError(path, f"{flag}: no such folder or CSV file")


def relative_name(root: Path) -> Callable:
    def name(record) -> str:
        try:
            return Path(record.path).relative_to(root).as_posix()
        except ValueError:
            return record.id
    return name


def sample_images(generator, n: int, seed: int, batch_size: int, steps: int | None = None) -> np.ndarray:
    from audit.progress import progress_bar

    if steps:
        generator = generator.with_sampling(num_inference_steps=steps)
    conditions = generator.default_conditions(n, seed)
    out = []
    with progress_bar(total=n, desc="sampling for the black-box attacks") as bar:
        for start in range(0, n, batch_size):
            out.append(generator.sample(conditions[start:start + batch_size], seed, first_index=start))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def quiet_diffusers() -> None:
    """diffusers' own loading bars and warnings would break the one-line error contract on stderr."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def denoiser_source(model, device: str):
    """What an executor worker loads the white-box access from: the model folder (paths travel)."""
    from attacks.membership.whitebox import DenoiserSource
    from generators.writer import GeneratorSource

    return DenoiserSource(GeneratorSource(str(model), device))


def prepare_inputs(args, names, runtime) -> PreparedInputs:
    from audit.commands.common import data_config_from_args
    from audit.data.dataset import open_dataset
    from audit.data.readers.folder import open_folder
    from generators.loading import load_generator

    quiet_diffusers()
    generator = load_generator(args.model, runtime.device)
    denoiser, no_denoiser = whitebox_access(generator)
    sources: dict[str, str] = {"model": str(args.model)}
    dataset = None
    if args.data:
        cfg = data_config_from_args(args)
        shape = tuple(cfg.preprocess.shape) if generator.kind == "folder" else tuple(generator.shape)
        if shape != tuple(cfg.preprocess.shape):  # the model's own image size (as generators.memorization does)
            cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"shape": shape})})
        dataset = open_dataset(cfg)
    else:
        if not (args.members and args.nonmembers):
            raise AuditInputError("--members/--nonmembers", "give both folders, or a dataset with --data NAME")
        shape = tuple(generator.shape)

    from_folder = {}
    if args.members:
        members, from_folder["members"] = open_candidates(args.members, "--members", shape, dataset)
        sources["members"] = str(args.members)
    else:
        ids = checkpoint_member_ids(generator)
        if ids:
            members = dataset.subset(ids=ids)
            if len(members) == 0:
                raise AuditInputError(args.model, f"none of the model's {len(ids)} training records are records "
                                                  f"of dataset '{dataset.name}' (wrong --data?)")
            sources["members"] = (f"the checkpoint's training records ({len(members)} of {len(set(ids))} found in "
                                  f"dataset '{dataset.name}')")
        else:
            members = dataset.subset(split="train")
            sources["members"] = "the dataset's train split (the model does not list its training images)"
        from_folder["members"] = False
    if args.nonmembers:
        nonmembers, from_folder["nonmembers"] = open_candidates(args.nonmembers, "--nonmembers", shape, dataset)
        sources["nonmembers"] = str(args.nonmembers)
    else:
        nonmembers = dataset.subset(split="test")
        if len(nonmembers) == 0:
            raise AuditInputError(args.data, "the dataset has no test split to draw non-members from; "
                                             "give --nonmembers")
        sources["nonmembers"] = "the dataset's test split"
        from_folder["nonmembers"] = False

    synthetic, no_synthetic = None, ""
    if args.synthetic:
        synthetic = open_folder(args.synthetic, shape=shape)
        sources["synthetic"] = str(args.synthetic)
    elif generator.kind == "folder":
        synthetic = open_folder(args.model, shape=shape)
        sources["synthetic"] = "the model's images"
    elif any(n in BLACK_BOX for n in names):
        synthetic = LazySamples(lambda: sample_images(generator, args.n_synthetic, args.seed, runtime.batch_size,
                                                      args.sample_steps))
        sources["synthetic"] = f"{args.n_synthetic} samples of the model (seed {args.seed})"
    else:
        no_synthetic = "no black-box attack asked for"

    embedder, no_embedder = None, "not asked for"
    if "dcr_embed" in names and synthetic is not None:
        from attacks.membership.embedding import reid_embedder

        train = dataset.subset(split="train") if dataset is not None else members
        embedder, no_embedder = reid_embedder(train, runtime)
        sources["embedding"] = ("re-id attacker trained on the dataset's train split" if dataset is not None
                                else "re-id attacker trained on the members folder")
    target = AttackTarget(denoiser, no_denoiser, synthetic, no_synthetic, embedder, no_embedder,
                          is_conditional(generator), denoiser_source=denoiser_source(args.model, runtime.device))
    roots = {"members": Path(args.members) if from_folder["members"] else None,
             "nonmembers": Path(args.nonmembers) if from_folder["nonmembers"] else None}
    member_name = relative_name(roots["members"]) if roots["members"] else (lambda r: r.id)
    nonmember_name = relative_name(roots["nonmembers"]) if roots["nonmembers"] else (lambda r: r.id)
    member_ids = {id(r) for r in members.records}

    def name_of(record) -> str:
        return member_name(record) if id(record) in member_ids else nonmember_name(record)

    by_id = not (from_folder["members"] or from_folder["nonmembers"])
    return PreparedInputs(generator, members, nonmembers, target, by_id, name_of, sources)
