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


def _rates(text: str) -> list[float]:
    from .eval.rd import parse_rates

    try:
        return parse_rates(text)
    except CodecError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _rd_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="gaussian", help="gaussian or laplace (unit variance)")
    p.add_argument(
        "--codec",
        type=_csv(str),
        default=["pvq", "lloydmax", "uniform", "nf4", "e8", "kmeans"],
        help=f"comma-separated codecs ({', '.join(sorted(CODECS))})",
    )
    p.add_argument("--dim", type=_csv(int), default=None, help="vector dimension(s); default: each codec's own")
    p.add_argument(
        "--bits", type=_rates, default=[2.0, 3.0, 4.0],
        help="target bits per weight: a list 2,3,4 or a range start:stop:step such as 2:4:0.05",
    )
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


# ---------------------------------------------------------------- pvq quantize


def _bool_switch(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=name.replace("-", "_"), action="store_true", default=None, help=help)
    p.add_argument(f"--no-{name}", dest=name.replace("-", "_"), action="store_false", help=f"switch off: {help}")


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="hub id or local directory (default: the reference model)")
    p.add_argument("--method", default="pvq", help="pvq, gptq, rtn, e8 or codebook")
    p.add_argument("--bits", type=float, default=3.0, help="target bits per weight, scales included")
    p.add_argument("--dim", type=int, default=None, help="vector dimension D (default: the method's)")
    p.add_argument("--group-size", type=int, default=None, help="vectors per stored scale (default: the method's)")
    p.add_argument("--calib", default=None, help="calibration text: file, directory or datasets name")
    p.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--damp", type=float, default=0.01, help="Hessian damping, relative to its mean diagonal")
    p.add_argument("--output", default=None, help="checkpoint directory to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _bool_switch(p, "rotate", "randomized Hadamard coherence processing")
    _bool_switch(p, "error-feedback", "GPTQ/LDLQ error feedback over column blocks")
    _bool_switch(p, "hessian-gain", "Hessian-optimal PVQ gains")
    p.add_argument("--gain-quantizer", default="lloydmax", help="PVQ gains: lloydmax or quantile (the paper's)")
    p.add_argument("--gain-target", default="projection", help="PVQ gain: projection or norm (the paper's)")
    p.add_argument("--search", default="greedy", help="PVQ shape search: greedy or refine")
    p.add_argument("--gain-bits", type=int, default=None, help="PVQ gain bits (default: best split for the rate)")
    p.add_argument("--codebook-weighting", default="hessian",
                   help="codebook: K-means importances hessian (diag H), obs (w^2/[H^-1]_ii) or none")
    p.add_argument("--lora-steps", type=int, default=0,
                   help="codebook: LoRA recovery steps on the not yet compressed layers after each chunk of blocks")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _quantize_config(args: argparse.Namespace):
    from .models import QuantizeConfig

    return QuantizeConfig(
        method=args.method,
        bits=args.bits,
        dim=args.dim,
        group_size=args.group_size,
        damp=args.damp,
        seed=args.seed,
        n_samples=args.samples,
        seq_len=args.seq_len,
        rotate=args.rotate,
        error_feedback=args.error_feedback,
        hessian_gain=args.hessian_gain,
        gain_quantizer=args.gain_quantizer,
        gain_target=args.gain_target,
        search=args.search,
        gain_bits=args.gain_bits,
        codebook_weighting=args.codebook_weighting,
        lora_steps=args.lora_steps,
    )


@command("quantize", "quantize a causal LM's decoder linears and save a checkpoint", _quantize_arguments)
def _quantize(args: argparse.Namespace) -> int:
    from .eval.runs import QuantizeRequest, run_quantize

    req = QuantizeRequest(
        model=args.model, config=_quantize_config(args), calib=args.calib, output=args.output,
        overwrite=args.overwrite, device=args.device,
    )
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    _, _, summary = run_quantize(req, log=log, progress=not args.json)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['method']} at {summary['bits_per_weight']:.4f} bits per weight (measured), "
              f"{summary['seconds']:.1f} s" + (f"; saved to {summary['output']}" if summary["output"] else ""))
    return 0


# ---------------------------------------------------------------- pvq eval


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model or pvq checkpoint (default: the reference model)")
    p.add_argument("--data", default=None, help="text file, directory or datasets name (default: reference held-out)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--stride", type=int, default=None, help="default: the context length")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")


@command("eval", "perplexity and measured bits per weight of a model or checkpoint", _eval_arguments)
def _eval(args: argparse.Namespace) -> int:
    from .eval.runs import run_eval

    out = run_eval(args.model, data=args.data, context=args.context, stride=args.stride or args.context,
                   max_tokens=args.eval_tokens, device=args.device, progress=not args.json)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['model']}: perplexity {out['perplexity']:.4f} on {out['tokens']} tokens "
              f"(context {out['context']}, stride {out['stride']}), {out['bits_per_weight']:.4f} bits per weight")
    return 0


# ---------------------------------------------------------------- pvq demo


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="default: the reference model")
    p.add_argument("--methods", type=_csv(str), default=["pvq", "gptq", "rtn"])
    p.add_argument("--bits", type=_csv(float), default=[2.0, 3.0, 4.0])
    p.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens to score (default 32768)")
    p.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--plot", default="demo.png", help="plot of perplexity against bits per weight ('' for none)")
    p.add_argument("--json", action="store_true")


@command("demo", "the main job: pvq, gptq and rtn at 2, 3, 4 bits on the reference model", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from .eval.report import format_table
    from .eval.runs import DemoConfig, run_demo

    cfg = DemoConfig(model=args.model, methods=tuple(args.methods), bits=tuple(args.bits),
                     eval_tokens=args.eval_tokens, n_samples=args.samples, seq_len=args.seq_len,
                     seed=args.seed, device=args.device, plot=args.plot or None)
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    out = run_demo(cfg, log=log)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['model']}: held-out perplexity on {out['eval_tokens']} tokens, context {out['context']}")
    print(format_table(out["results"], [
        ("method", "method", None),
        ("target_bits", "target", ".0f"),
        ("bits_per_weight", "bits/weight", ".3f"),
        ("perplexity", "perplexity", ".3f"),
        ("quantize_seconds", "quantize s", ".1f"),
        ("eval_seconds", "eval s", ".1f"),
    ]))
    if out.get("plot"):
        print(f"plot written to {out['plot']}")
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
