"""`audit attack mia`: membership inference against one model. The folder form is a fixed contract:

    audit attack mia --model CKPT|PIPELINE_DIR|DIR --members DIR --nonmembers DIR --out DIR [--attacks ...]

writes OUT/mia_scores.csv (`file,is_member`, then one score column per attack, higher = more likely a member,
empty where the attack was skipped), OUT/mia.json and OUT/roc_loglog.png. The dataset form

    audit attack mia --model M --data NAME [--data-root DIR] [--members DIR|CSV] [--nonmembers DIR|CSV] --out DIR

takes the members from the checkpoint's own list of training records (else the train split, or --members) and
the non-members from the test split (or --nonmembers).
"""

from __future__ import annotations

import argparse

from audit.commands.common import add_data_options
from audit.parallel import add_executor_options
from audit.errors import EXIT_OK


def register(subparsers) -> None:
    from attacks.membership.pipeline import DEFAULT_MIN_PAIRS
    from attacks.membership.registry import ATTACKS, DEFAULT_ATTACKS

    p = subparsers.add_parser(
        "mia", help="membership inference: can an attacker tell the model's training images from new ones?",
        description="Score the model's training images (members) and label-matched held-out images (non-members) "
                    "with white-box diffusion attacks (loss, PIA, SecMI, SimA) and black-box distance attacks on its "
                    "samples (dcr, dcr_embed); report AUC, TPR at 1%/0.1% FPR, balanced accuracy with bootstrap CIs "
                    "and a control run per attack.")
    p.add_argument("--model", required=True, metavar="CKPT|PIPELINE_DIR|DIR",
                   help="synth-audit checkpoint, diffusers pipeline folder, or a folder of generated images")
    p.add_argument("--members", metavar="DIR|CSV",
                   help="the model's training images: an image folder, or (with --data) a CSV of record ids "
                        "(column id); default: the checkpoint's list of training records, else the train split")
    p.add_argument("--nonmembers", metavar="DIR|CSV",
                   help="held-out real images the model never saw (folder, or CSV of record ids with --data); "
                        "default with --data: the test split")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_data_options(p, required=False)
    p.add_argument("--attacks", default=None,
                   help=f"comma-separated attacks (known: {', '.join(ATTACKS.names())}); default: all that the "
                        f"model allows ({','.join(DEFAULT_ATTACKS)}), the others skipped with the reason. Named "
                        "explicitly, an attack the model cannot undergo is an error")
    p.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="an attack parameter, e.g. loss.timesteps=[50,100] or secmi.t_sec=200 (repeatable)")
    p.add_argument("--synthetic", metavar="DIR", help="the model's samples for the black-box attacks "
                                                      "(default: the folder model's images, else --n-synthetic samples)")
    p.add_argument("--n-synthetic", type=int, default=256, help="samples drawn from the model for the black-box "
                                                                "attacks when --synthetic is not given (default 256)")
    p.add_argument("--sample-steps", type=int, help="sampling steps for those samples (default: the model's)")
    p.add_argument("--match-fields", help="labels members and non-members are matched on, in priority order "
                                          "(default: view,density,birads for mammograms; the model's labels in 3D)")
    p.add_argument("--min-members", type=int, default=DEFAULT_MIN_PAIRS,
                   help="fewest member/non-member pairs accepted (default %(default)s)")
    p.add_argument("--max-pairs", type=int, help="use at most this many pairs (a random subset; default: all)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' noise, the matching and the bootstrap")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (1 is fastest on a busy machine)")
    add_executor_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from attacks.membership.inputs import prepare_inputs
    from attacks.membership.pipeline import build_attacks, run_membership, write_outputs
    from attacks.membership.registry import ATTACKS, DEFAULT_ATTACKS
    from audit.errors import AuditInputError
    from audit.parallel import executor_from_args
    from audit.registry import Runtime, parse_option_assignments

    if args.threads:
        torch.set_num_threads(args.threads)
    explicit = args.attacks is not None
    names = ATTACKS.parse_names(args.attacks, "--attacks") if explicit else list(DEFAULT_ATTACKS)
    options = parse_option_assignments(args.option)
    for flag, value in (("--min-members", args.min_members), ("--n-boot", args.n_boot),
                        ("--batch-size", args.batch_size), ("--n-synthetic", args.n_synthetic)):
        if value < 1:
            raise AuditInputError(flag, "must be at least 1")
    runtime = Runtime(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=True,
                      cache_dir=args.cache_dir, executor=executor_from_args(args))
    build_attacks(names, options, runtime)  # parameters validated before any model is loaded
    prepared = prepare_inputs(args, names, runtime)
    match_fields = [f.strip() for f in args.match_fields.split(",") if f.strip()] if args.match_fields else None
    result = run_membership(prepared.generator, prepared.members, prepared.nonmembers, names, options, runtime,
                            target=prepared.target, explicit=explicit, match_fields=match_fields,
                            min_pairs=args.min_members, max_pairs=args.max_pairs, n_boot=args.n_boot, by_id=prepared.by_id,
                            name_of=prepared.name_of)
    summary = write_outputs(result, args.out, {"sources": prepared.sources})
    for name in names:
        if name in result.skipped:
            print(f"{name}: skipped — {result.skipped[name]}")
            continue
        fig = result.evaluations[name].figures
        auc, tpr, ctl = fig["auc"], fig["tpr_at_fpr_1pct"], fig["control_auc"]
        line = (f"{name}: AUC {auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}], TPR@1%FPR {tpr.value:.3f}; "
                f"control AUC {ctl.value:.3f} [{ctl.ci_low:.3f}, {ctl.ci_high:.3f}]")
        if name in result.nearest:
            share = result.dcr_share(name)
            line += f"; DCR share {share.value:.3f} [{share.ci_low:.3f}, {share.ci_high:.3f}] of {share.n} samples"
        print(line)
    print(f"mia: {result.matching.n_pairs} members vs {result.matching.n_pairs} non-members "
          f"({summary['matching']['matched_exactly']} pairs matched on {','.join(result.matching.fields) or 'nothing'}); "
          f"wrote {args.out}/mia_scores.csv")
    return EXIT_OK
