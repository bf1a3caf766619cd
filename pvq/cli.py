"""The ``pvq`` command. Subcommands are registered in :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from .codecs import CODECS, CodecError


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def wrap(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(help, add_arguments, run)
        return run

    return wrap


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from err

    return parse


# ---------------------------------------------------------------- pvq rd


def _rd_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="gaussian", help="gaussian or laplace (unit variance)")
    p.add_argument(
        "--codec",
        type=_csv(str),
        default=["pvq", "lloydmax", "uniform", "nf4", "e8", "kmeans"],
        help=f"comma-separated codecs ({', '.join(sorted(CODECS))})",
    )
    p.add_argument("--dim", type=_csv(int), default=None, help="vector dimension(s); default: each codec's own")
    p.add_argument("--bits", type=_csv(float), default=[2.0, 3.0, 4.0], help="target bits per weight, e.g. 2,3,4")
    p.add_argument("--samples", type=int, default=1 << 17, help="number of i.i.d. samples (default 131072)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write MSE (dB) against rate with the bound")


@command("rd", "rate-distortion bench of the codecs on a synthetic source", _rd_arguments)
def _rd(args: argparse.Namespace) -> int:
    from .eval.rd import RDConfig, log_to_stderr, plot_rd, run_rd, shannon_mse
    from .eval.report import format_table

    config = RDConfig(
        source=args.source,
        codecs=tuple(args.codec),
        dims=tuple(args.dim) if args.dim else None,
        bits=tuple(args.bits),
        samples=args.samples,
        seed=args.seed,
    )
    results = run_rd(config, progress=log_to_stderr)
    if args.plot:
        plot_rd(results, args.plot, config.source)
    if args.json:
        print(json.dumps({"source": config.source, "samples": config.samples, "seed": config.seed,
                          "results": [r.to_dict() for r in results]}))
        return 0
    rows = [dict(r.to_dict(), bound=shannon_mse(r.bits_per_weight)) for r in results]
    print(f"i.i.d. {config.source} source, unit variance, {config.samples} samples, seed {config.seed}")
    print(
        format_table(
            rows,
            [
                ("codec", "codec", None),
                ("dim", "D", "d"),
                ("bits_per_weight", "bits/weight", ".4f"),
                ("mse", "MSE", ".5f"),
                ("bound", "D(R)", ".5f"),
                ("snr_db", "SNR dB", ".2f"),
                ("shannon_gap_db", "gap dB", ".2f"),
                ("seconds", "time s", ".2f"),
                ("setting", "setting", None),
            ],
        )
    )
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvq", description="Vector quantization of large language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except CodecError as err:  # bad input: say what to change, no traceback
        print(f"pvq {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
