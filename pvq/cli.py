"""The ``pvq`` command. Subcommands are registered in :data:`COMMANDS`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable

from .codecs import CODECS, CodecError
from .errors import PvqError


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
    except PvqError as err:
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
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a keyword for every codec's factory, e.g. group_weights=65536 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write MSE (dB) against rate with the bound")


def _option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` -> (name, value), the value read as JSON where it parses (numbers, true/false)."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise CodecError(f"--option takes NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


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
        options=tuple(_option(o) for o in args.option),
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
                ("entropy_bits_per_weight", "H b/w", ".4f"),
                ("coded_bits_per_weight", "coded b/w", ".4f"),
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


# QuantizeConfig fields that are not plain flags: the method comes first; codec options come from the codecs
_CONFIG_FLAGS_SKIP = ("method", "options")


def _config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pvq.models.QuantizeConfig` field (help from its metadata), and one per
    codec option of the registered codecs (:class:`pvq.codecs.CodecOption`), so a new method or
    option needs no edit here."""
    import dataclasses

    from .models import METHODS, QuantizeConfig

    p.add_argument("--method", default="pvq", help=f"quantization method: {', '.join(METHODS)}")
    for f in dataclasses.fields(QuantizeConfig):
        if f.name in _CONFIG_FLAGS_SKIP:
            continue
        flag = f.metadata.get("flag", f.name).replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in ("bool | None", "bool"):
            _bool_switch(p, flag, help_)
            continue
        kind = {"float": float, "float | None": float, "int": int, "int | None": int}.get(f.type, str)
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        p.add_argument(f"--{flag}", dest=f"config_{f.name}", type=kind, default=default, choices=choices,
                       metavar=None if choices else kind.__name__.upper(),
                       help=f"{help_} (default: {default})" if default is not None else help_)
    seen: dict[str, tuple] = {}
    for m in METHODS.values():
        for opt in m.options:
            seen.setdefault(opt.name, (opt, []))[1].append(m.name)
    for name, (opt, methods) in seen.items():
        flag, help_ = name.replace("_", "-"), f"{', '.join(methods)}: {opt.help}"
        if opt.type is bool:
            p.add_argument(f"--{flag}", dest=f"option_{name}", action="store_true", default=None, help=help_)
            p.add_argument(f"--no-{flag}", dest=f"option_{name}", action="store_false", help=f"switch off: {help_}")
            continue
        p.add_argument(f"--{flag}", dest=f"option_{name}", type=opt.type, default=None,
                       choices=opt.choices, metavar=opt.type.__name__.upper() if not opt.choices else None,
                       help=f"{help_} (default: {opt.default if opt.default is not None else 'chosen for the rate'})")


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="hub id or local directory (default: the reference model)")
    _config_flags(p)
    p.add_argument("--calib", default=None, help="calibration text: file, directory or datasets name")
    p.add_argument("--output", default=None, help="checkpoint directory to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output directory")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--stream", action="store_true",
                   help="read one decoder block at a time from a local safetensors directory (models larger than memory)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="discard the finished blocks of an interrupted run on --output and start over")
    p.add_argument("--activations", default="auto", choices=("auto", "device", "cpu", "disk"),
                   help="where calibration activations live between blocks (default: auto, the device when they fit)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass (default: 8)")
    p.add_argument("--calib-dtype", default="float32", choices=("float32", "bfloat16", "float16", "source"),
                   help="dtype the model is loaded in and the calibration forwards run in (default float32; "
                        "source: the checkpoint's own, e.g. bfloat16, several times faster on a GPU and half "
                        "the activation memory; Hessians and solves stay float64)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.add_argument_group("per-layer rates (--allocate)")
    a.add_argument("--allocate", action="store_true",
                   help="--bits is the average over the quantized weights (measured from stored bytes); each "
                        "layer gets its own rate, chosen by measuring its error at candidate rates")
    a.add_argument("--allocate-metric", default="fisher", choices=("proxy", "block", "fisher"),
                   help="distortion measured per layer and rate: fisher (default: the solver's Hessian-weighted "
                        "error weighted by the loss's sensitivity to the layer's output; one backward pass of the "
                        "whole model on the device), proxy (the unweighted error; for models whose backward pass "
                        "does not fit) or block (the block's output error, EXL2's way; slower)")
    a.add_argument("--min-bits", type=float, default=None, help="lowest rate of any layer (default: target - 1)")
    a.add_argument("--max-bits", type=float, default=None, help="highest rate of any layer (default: target + 1)")
    a.add_argument("--allocate-step", type=float, default=0.25, help="spacing of the candidate rates (default 0.25)")
    a.add_argument("--allocate-count-embeddings", action="store_true",
                   help="the budget also covers the input embedding and the LM head, kept at the checkpoint's "
                        "dtype (each at its codec's rate with --quantize-head / --quantize-embedding): --bits is "
                        "the average over "
                        "them and the quantized weights (the whole model's size)")
    a.add_argument("--allocate-tables", action="store_true",
                   help="with --allocate-count-embeddings: the allocation also chooses the rates of the tables "
                        "quantized by --quantize-embedding / --quantize-head (else they take --bits); measured worse "
                        "than --bits for them on the reference model (README)")
    a.add_argument("--allocate-rows", type=float, default=0.125,
                   help="fraction of each layer's output rows the proxy metric solves per candidate (default 0.125)")


def _allocate_config(args: argparse.Namespace):
    """The :class:`~pvq.models.allocation.AllocateConfig` of the parsed flags, or None without --allocate."""
    if not args.allocate:
        given = [f for f in ("min_bits", "max_bits") if getattr(args, f) is not None]
        if given:
            raise PvqError(f"--{given[0].replace('_', '-')} bounds per-layer rates: add --allocate")
        if args.allocate_count_embeddings or args.allocate_tables:
            raise PvqError("--allocate-count-embeddings / --allocate-tables set what the --allocate budget covers: "
                           "add --allocate")
        return None
    from .models.allocation import AllocateConfig

    return AllocateConfig(args.allocate_metric, args.min_bits, args.max_bits, args.allocate_step, args.allocate_rows,
                          count_embeddings=args.allocate_count_embeddings, size_tables=args.allocate_tables)


def _quantize_config(args: argparse.Namespace):
    """The :class:`~pvq.models.QuantizeConfig` of the parsed flags (codec options only when given)."""
    import dataclasses

    from .models import QuantizeConfig

    kwargs = {}
    for f in dataclasses.fields(QuantizeConfig):
        if f.name in _CONFIG_FLAGS_SKIP:
            continue
        value = getattr(args, f"config_{f.name}", getattr(args, f.name, None))
        if value is not None or f.default is None:
            kwargs[f.name] = value
    options = {k.removeprefix("option_"): v for k, v in vars(args).items() if k.startswith("option_") and v is not None}
    return QuantizeConfig(method=args.method, options=options, **kwargs)


@command("quantize", "quantize a causal LM's decoder linears and save a checkpoint", _quantize_arguments)
def _quantize(args: argparse.Namespace) -> int:
    from .eval.runs import QuantizeRequest, run_quantize

    req = QuantizeRequest(
        model=args.model, config=_quantize_config(args), calib=args.calib, output=args.output,
        overwrite=args.overwrite, device=args.device, stream=args.stream, resume=args.resume,
        activations=args.activations, batch_size=args.batch_size,
        allocate=_allocate_config(args), calib_dtype=args.calib_dtype,
    )
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    _, _, summary = run_quantize(req, log=log, progress=not args.json)
    if summary.get("rank", 0) != 0:  # another rank of a distributed run: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['method']} at {summary['bits_per_weight']:.4f} bits per weight (measured), "
              + (f"activations {summary['activation']['method']} at {summary['bits_per_activation']:.4f} bits, "
                 if summary["activation"] else "") +
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
    p.add_argument("--tasks", default=None, metavar="NAME[,NAME...]",
                   help="zero-shot tasks through lm-evaluation-harness, e.g. pvq_heldout (offline) or "
                        "arc_easy,arc_challenge,piqa,winogrande (their data must be reachable)")
    p.add_argument("--limit", type=float, default=None,
                   help="score only the first N items of each task (a number below 1: that fraction)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's, or 0)")
    p.add_argument("--batch-size", type=int, default=8, help="zero-shot batch size (default 8)")
    p.add_argument("--include-path", action="append", default=None, metavar="DIR",
                   help="extra directory of harness task YAML files (repeatable)")
    p.add_argument("--backend", default=None,
                   help="runtime backend of the quantized layers: dense (decode once, cache W), "
                        "dense-rotated, triton (kernels on the codes), triton-rows (the same, laid out for 2 to 16 rows "
                        "a call: batched decoding); default: the best for the device")
    p.add_argument("--json", action="store_true")


@command("eval", "perplexity, measured bits per weight and zero-shot accuracy of a model or checkpoint",
         _eval_arguments)
def _eval(args: argparse.Namespace) -> int:
    from .eval.runs import run_eval

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    out = run_eval(args.model, data=args.data, context=args.context,
                   stride=args.context if args.stride is None else args.stride,
                   max_tokens=args.eval_tokens, device=args.device, progress=not args.json,
                   tasks=args.tasks, limit=limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                   include_path=args.include_path, backend=args.backend)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['model']}: perplexity {out['perplexity']:.4f} on {out['tokens']} tokens "
              f"(context {out['context']}, stride {out['stride']}), {out['bits_per_weight']:.4f} bits per weight, "
              f"{out['bits_per_activation']:.4f} bits per activation")
        if "zeroshot" in out:
            from .eval.zeroshot import format_zeroshot

            zs = out["zeroshot"]
            print(f"zero-shot accuracy ({zs['harness']}, standard errors from the harness, {zs['seconds']:.0f} s):")
            print("\n".join(format_zeroshot(zs)))
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
    p.add_argument("--zeroshot-task", default="pvq_heldout", help="lm-evaluation-harness task of the accuracy column")
    p.add_argument("--zeroshot-limit", type=int, default=250,
                   help="items of that task scored per row (default 250; 0: no accuracy column)")
    p.add_argument("--json", action="store_true")


@command("demo", "the main job: pvq, gptq and rtn at 2, 3, 4 bits on the reference model", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from .eval.report import format_table
    from .eval.runs import DemoConfig, run_demo

    cfg = DemoConfig(model=args.model, methods=tuple(args.methods), bits=tuple(args.bits),
                     eval_tokens=args.eval_tokens, n_samples=args.samples, seq_len=args.seq_len,
                     seed=args.seed, device=args.device, plot=args.plot or None,
                     zeroshot_task=args.zeroshot_task, zeroshot_limit=args.zeroshot_limit)
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    out = run_demo(cfg, log=log)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['model']}: held-out perplexity on {out['eval_tokens']} tokens, context {out['context']}")
    columns = [
        ("method", "method", None),
        ("target_bits", "target", ".0f"),
        ("bits_per_weight", "bits/weight", ".3f"),
        ("perplexity", "perplexity", ".3f"),
    ]
    if out.get("zeroshot"):
        zs = out["zeroshot"]
        ses = [r["accuracy_stderr"] for r in out["results"] if r.get("accuracy_stderr") is not None]
        print(f"accuracy: {zs['task']} ({zs['harness']}), {zs['limit']} items per row, 4 choices (chance 0.25), "
              f"acc and length-normalized acc_norm" + (f", standard error about {max(ses):.3f}" if ses else ""))
        columns += [("accuracy", "acc", ".3f"), ("accuracy_norm", "acc_norm", ".3f")]
    columns += [("quantize_seconds", "quantize s", ".1f"), ("eval_seconds", "eval s", ".1f")]
    if out.get("zeroshot"):
        columns.append(("zeroshot_seconds", "zero-shot s", ".1f"))
    print(format_table(out["results"], columns))
    if out.get("plot"):
        print(f"plot written to {out['plot']}")
    return 0


# ---------------------------------------------------------------- pvq generate


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model or pvq checkpoint (default: the reference model)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --sample)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens, 0: all (with --sample)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, help="runtime backend of the quantized layers (see pvq eval --help)")
    p.add_argument("--decode", default="auto", help="auto (default: static KV cache and a CUDA-graph step on CUDA, "
                   "model.generate elsewhere), eager (model.generate) or static (static cache; graph on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="compile the static path's decode step with torch.compile (norms, rotary embeddings, residual "
                        "adds and cache writes fused; each quantized product one operator); takes the static path; the "
                        "compilation counts in the set-up time, not in tokens/s (about 20 s at 7B on a GPU, where "
                        "it made decoding about 1.65x faster: worth it for long generations; on Hopper GPUs its "
                        "kernels launch as programmatic dependent launches, about 3%% more)")
    p.add_argument("--merge-projections", nargs="?", const="yes", default="auto", choices=("auto", "yes", "no"),
                   help="run each block's q/k/v and gate/up linears as one product each where they read one input "
                        "the same way (the fused plan's layers; plain linears), and a quantized down_proj's gated "
                        "activation in the kernel that rotates its input where there is one: fewer kernels, same "
                        "outputs up to float rounding. auto (default): on CUDA; yes (the bare flag); no")
    p.add_argument("--json", action="store_true")


@command("generate", "continue a prompt with a model or checkpoint (greedy or seeded sampling), with tokens/s",
         _generate_arguments)
def _generate(args: argparse.Namespace) -> int:
    from .eval.generate import GenerateConfig, run_generate

    cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed, decode=args.decode,
                         compile=args.compile)
    out = run_generate(args.model, args.prompt, cfg, device=args.device, backend=args.backend,
                       merge={"auto": None, "yes": True, "no": False}[args.merge_projections])
    if args.json:
        print(json.dumps(out))
        return 0
    print(out["prompt"] + out["completion"])
    how = "greedy" if out["greedy"] else f"sampled, seed {out['seed']}"
    prefill = f" (prefill {out['prefill_seconds'] * 1e3:.1f} ms)" if "prefill_seconds" in out else ""
    print(f"[{out['new_tokens']} new tokens in {out['seconds']:.2f} s: {out['tokens_per_second']:.1f} tokens/s, "
          f"{how}, prompt {out['prompt_tokens']} tokens{prefill}, {out.get('mode', out['decode'])}]", file=sys.stderr)
    mem = out["memory"]
    if mem["stored_bytes"]:  # a quantized model: what its layers hold on the device against what they store
        print(f"[quantized layers: {mem['held_bytes'] / 1e6:.1f} MB held, {mem['held_bytes'] / mem['stored_bytes']:.2f}x "
              f"their {mem['stored_bytes'] / 1e6:.1f} MB stored; the model {mem['model_bytes'] / 1e6:.1f} MB on "
              f"{out['device']}]", file=sys.stderr)
    if "merged" in out:
        print(f"[{out['merged']}]", file=sys.stderr)
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
    except PvqError as err:  # bad input: say what to change, no traceback
        print(f"pvq {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
