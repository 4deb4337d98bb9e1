"""The ``mscon`` command (also ``python -m mscon``).

Exit status: 0 on success; 2 on bad input (config, data, arguments, a run
folder with no checkpoint or in use, a full disk) with a one-line message naming
the file, key or column: every such error is a :class:`mscon.errors.UserError`;
3 when training stopped on a non-finite loss; 1 (a traceback) only for bugs.
See docs/troubleshooting.md.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from mscon.demo import DEMO_METHODS


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse reports anything else, exit status 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mscon",
        description="Multi-similarity contrastive learning: train, evaluate, report.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train MSCon and baselines on the embedded data")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), metavar="METHOD")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")

    train = commands.add_parser("train", help="train one config")
    train.add_argument("config", help="YAML file, or the name of a shipped config (demo, ...)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    train.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    train.add_argument("--overwrite", action="store_true", help="start again in an existing run")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")

    evaluate = commands.add_parser("eval", help="linear probe and kNN per task")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", default="last")

    embed = commands.add_parser("embed", help="encoder features of a manifest folder")
    embed.add_argument("run_dir")
    embed.add_argument("--data", required=True, help="manifest folder (labels.csv)")
    embed.add_argument("--out", required=True, help="output .npy file")
    embed.add_argument("--checkpoint", default="last")

    report = commands.add_parser("report", help="tables and figures for one or more runs")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--out", default=None)

    data = commands.add_parser("data", help="write or convert datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    synth = data_commands.add_parser("synth", help="write the embedded dataset as a manifest")
    synth.add_argument("--out", required=True)
    synth.add_argument("--size", type=_positive_int, default=6000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=_positive_int, default=32)
    synth.add_argument(
        "--structure",
        choices=["standard", "grouped"],
        default="standard",
        help="label columns: standard, or grouped (adds the coarse form and tone)",
    )
    for name, source in (("zappos50k", "UT-Zappos50K"), ("medic", "MEDIC")):
        converter = data_commands.add_parser(name, help=f"convert the {source} release")
        converter.add_argument("src", help=f"the unpacked {source} folder")
        converter.add_argument("--out", required=True)
        if name == "zappos50k":
            converter.add_argument(
                "--multi-valued",
                action="append",
                default=[],
                metavar="COLUMN=POLICY",
                dest="multi_valued",
                help="policy for ';'-joined cells: combine (Men+Women), first or missing; "
                "repeatable (defaults: gender=combine, closure=combine, others first)",
            )
    return parser


def _train(args: argparse.Namespace) -> None:
    """Train one config; under torchrun on every rank, then evaluate on rank 0 alone."""
    from mscon import distributed
    from mscon.config import load_config
    from mscon.evaluate import evaluate_run, format_results
    from mscon.train import train

    config = load_config(args.config, args.overrides)
    with distributed.process_group_from_env(config.train.torch_device().type):
        run_dir = train(config, resume=args.resume, overwrite=args.overwrite)
        main = distributed.is_main_process()
    if not main:  # the other ranks are done; rank 0 evaluates without a process group
        return
    print(f"trained: {run_dir}")
    if not args.no_eval:
        print(format_results({config.name: evaluate_run(run_dir)}))


def _eval(args: argparse.Namespace) -> None:
    from mscon.evaluate import evaluate_run, format_results

    results = evaluate_run(args.run_dir, args.checkpoint)
    print(format_results({Path(args.run_dir).name: results}))


def _embed(args: argparse.Namespace) -> None:
    import numpy as np

    from mscon.api import embed
    from mscon.data import load_dataset
    from mscon.runs import load_run_config

    size = load_run_config(args.run_dir).data.image_size
    images = load_dataset(args.data, image_size=size).images
    features = embed(args.run_dir, images, checkpoint=args.checkpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features.numpy())
    print(f"wrote {out}: {tuple(features.shape)} features, rows in labels.csv order")


def _report(args: argparse.Namespace) -> None:
    from mscon.report import write_report

    print(f"wrote {write_report(args.run_dirs, args.out)}")


def _data(args: argparse.Namespace) -> None:
    from mscon import data

    if args.data_command == "synth":
        out = data.write_synthetic(args.out, args.size, args.seed, args.image_size, args.structure)
    elif args.data_command == "zappos50k":
        policy = {}
        for item in args.multi_valued:
            column, sep, value = item.partition("=")
            if not sep:
                raise data.DataError(f"--multi-valued {item}: expected COLUMN=POLICY")
            policy[column] = value
        out = data.convert_zappos50k(args.src, args.out, multi_valued=policy)
    else:
        out = data.convert_medic(args.src, args.out)
    print(f"wrote {Path(out) / 'labels.csv'}")


def _demo(args: argparse.Namespace) -> None:
    from mscon.demo import run_demo

    run_demo(Path(args.out), seed=args.seed, methods=args.methods, overrides=args.overrides)


COMMANDS = {
    "demo": _demo,
    "train": _train,
    "eval": _eval,
    "embed": _embed,
    "report": _report,
    "data": _data,
}


# a file or folder the user named cannot be read or written: their setup, not a bug
FILE_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0, 2 user error, 3 non-finite loss).

    A :class:`~mscon.errors.UserError`, or an ``OSError`` naming a file that
    cannot be read or written (:data:`FILE_ERRORS`), prints one line and returns
    2; any other exception is a bug and propagates with its traceback (exit 1).
    """
    args = _parser().parse_args(argv)
    from mscon import distributed
    from mscon.errors import NonFiniteLossError, UserError

    if args.command != "train" and distributed.launched_world_size() > 1:
        print(
            f"mscon: error: only `mscon train` runs on several processes (torchrun); "
            f"run `mscon {args.command}` as one process",
            file=sys.stderr,
        )
        return 2
    try:
        COMMANDS[args.command](args)
    except NonFiniteLossError as error:
        print(f"mscon: error: {error}", file=sys.stderr)
        return 3
    except UserError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"mscon: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None or error.errno not in FILE_ERRORS:
            raise
        print(f"mscon: error: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mscon: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
