"""`audit generator train` and `audit generate`."""

from __future__ import annotations

import argparse

from audit.commands.common import add_data_options, data_config_from_args
from audit.parallel import add_executor_options


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def register(subparsers) -> None:
    gen = subparsers.add_parser("generator", help="train a generator (conditional latent diffusion, 2D or 3D)")
    gen_sub = gen.add_subparsers(dest="generator_command", metavar="SUBCOMMAND")
    gen_sub.required = True
    train = gen_sub.add_parser("train", help="two-stage training (autoencoder, then diffusion); resumable")
    add_data_options(train)
    train.add_argument("--config", required=True, metavar="PRESET",
                       help="generator preset (ldm2d-tiny, ldm3d-tiny, memorize) or a YAML file")
    train.add_argument("--out", required=True, metavar="CKPT",
                       help="checkpoint folder; if it holds an interrupted run of the same command, it resumes")
    train.add_argument("--seed", type=int, default=0)
    _add_device(train)
    train.set_defaults(func=run_train)

    generate = subparsers.add_parser("generate", help="sample N images + manifest.csv from a model")
    generate.add_argument("--model", required=True, metavar="CKPT",
                          help="synth-audit checkpoint, diffusers pipeline folder, or a folder of images")
    generate.add_argument("--n", type=int, required=True, help="number of images")
    generate.add_argument("--out", required=True, metavar="DIR")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--conditions", metavar="CSV",
                          help="conditions to use in order (manifest columns); default: the training set's")
    generate.add_argument("--steps", type=int, help="sampling steps (default: the model's config)")
    generate.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the config's)")
    _add_device(generate)
    add_executor_options(generate)
    generate.set_defaults(func=run_generate)


def run_train(args) -> int:
    from audit.data.dataset import open_dataset
    from audit.errors import AuditInputError
    from generators.config import load_generator_config
    from generators.training import train_from_dataset

    _set_threads(args)
    config = load_generator_config(args.config)
    data_cfg = data_config_from_args(args)
    if config.shape is not None and tuple(config.shape) != tuple(data_cfg.preprocess.shape):
        # the preset fixes the image size; the dataset is preprocessed to it
        data_cfg = data_cfg.model_copy(update={"preprocess": data_cfg.preprocess.model_copy(
            update={"shape": tuple(config.shape)})})
    dataset = open_dataset(data_cfg)
    try:
        result = train_from_dataset(config, dataset, args.out, seed=args.seed, device=args.device)
    except KeyboardInterrupt:
        raise AuditInputError(args.out, "interrupted; a checkpoint was saved — rerun the same command to resume") \
            from None
    losses = [h for h in result.state.history if h["stage"] == "diffusion"] or result.state.history
    last = f", last diffusion loss {losses[-1]['loss']:.4f}" if losses else ""
    print(f"trained {config.kind} ({result.steps_this_run} steps this run, {result.state.seconds:.0f} s in total"
          f"{last}) → {args.out}")
    return 0


def run_generate(args) -> int:
    from audit.errors import AuditInputError
    from generators.conditions import read_conditions_csv
    from generators.loading import load_generator
    from audit.parallel import executor_from_args
    from generators.writer import GeneratorSource, generate_to_folder

    _set_threads(args)
    if args.n < 1 or args.batch_size < 1:
        raise AuditInputError(None, "--n and --batch-size must be at least 1")
    executor = executor_from_args(args)  # a missing Ray is an error before any model loads
    generator = load_generator(args.model, device=args.device)
    overrides = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance))
                 if v is not None}
    if overrides:
        generator = _with_sampling(generator, overrides)
    conditions = read_conditions_csv(args.conditions) if args.conditions else None
    source = GeneratorSource(str(args.model), args.device, tuple(sorted(overrides.items())))
    result = generate_to_folder(generator, args.out, args.n, seed=args.seed, batch_size=args.batch_size,
                                conditions=conditions, executor=executor, source=source)
    print(f"generated {result.written} images ({result.skipped} already there) → {args.out}")
    return 0


def _with_sampling(generator, overrides: dict):
    from audit.errors import AuditInputError

    if not hasattr(generator, "with_sampling"):
        raise AuditInputError(None, f"--steps/--guidance do not apply to a {generator.kind} model")
    return generator.with_sampling(**overrides)
