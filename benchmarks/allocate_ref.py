"""Uniform against allocated rates (``--allocate``) on the reference model, the demo's evaluation settings.

    python benchmarks/allocate_ref.py --runs pvq:u:2.5,pvq:a:1.9647,pvq:a:=u2.5 --out docs/allocate_ref.jsonl

Each run is ``method:mode:target`` (mode ``u`` uniform, ``a`` allocated); a target ``=u<R>`` means
"the measured rate of the uniform run at R of this method in this invocation" (same measured rate).
Perplexity on the first 32,768 held-out tokens, context 512, calibration 64 windows of 256 tokens of
calib.txt, seed 0 (pvq/eval/runs.py DemoConfig). Every finished run is appended to ``--out`` as one
JSON line (method, mode, target, measured bits, perplexity, seconds, the per-layer allocation).
``--metric``, ``--rows``, ``--step`` set the allocation; ``--plot`` redraws the figures from ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pvq.eval.perplexity import perplexity
from pvq.eval.runs import load_model
from pvq.models import QuantizeConfig, quantize_model
from pvq.models.allocation import AllocateConfig
from _reference import reference_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=False, default="")
    ap.add_argument("--out", default="docs/allocate_ref.jsonl")
    ap.add_argument("--metric", default="fisher")
    ap.add_argument("--rows", type=float, default=0.125)
    ap.add_argument("--step", type=float, default=0.25)
    ap.add_argument("--min-bits", type=float, default=None, help="lowest candidate rate (default: target - 1)")
    ap.add_argument("--max-bits", type=float, default=None, help="highest candidate rate (default: target + 1)")
    ap.add_argument("--eval-tokens", type=int, default=None, help="default: the demo's 32768")
    ap.add_argument("--calib", default=None, help="calibration text file for every run (default: the demo's "
                    "calib.txt, a subset of the reference model's training text)")
    ap.add_argument("--plot", default=None, help="draw docs figures from --out into this prefix and stop")
    ap.add_argument("--demo-json", default="docs/demo_cpu.json",
                    help="with --plot: add this demo run's uniform rows (same settings) of the plotted methods")
    args = ap.parse_args()
    if args.plot:
        plot(args.out, args.plot, args.demo_json)
        return
    demo, model0, _, calib, ids = reference_inputs(args.eval_tokens, args.calib)
    state = {k: v.clone() for k, v in model0.state_dict().items()}
    measured: dict[tuple[str, float], float] = {}
    for spec in [s for s in args.runs.split(",") if s]:
        method, mode, target = spec.split(":")
        bits = measured[(method, float(target[2:]))] if target.startswith("=u") else float(target)
        model, _ = load_model(None)
        model.load_state_dict(state)
        cfg = QuantizeConfig(method=method, bits=bits, n_samples=demo.n_samples, seq_len=demo.seq_len, seed=demo.seed)
        alloc = AllocateConfig(args.metric, args.min_bits, args.max_bits, step=args.step, rows=args.rows) if mode == "a" else None
        t = time.perf_counter()
        report = quantize_model(model, calib, cfg, progress=False, log=None, allocation=alloc)
        qs = time.perf_counter() - t
        ppl = perplexity(model, ids, context=demo.context, stride=demo.context).perplexity
        if mode == "u":
            measured[(method, float(target))] = report.bits_per_weight
        row = {"method": method, "mode": "allocated" if mode == "a" else "uniform", "target_bits": bits,
               "calib": args.calib or "calib.txt",
               "bits_per_weight": report.bits_per_weight, "perplexity": ppl, "quantize_seconds": qs,
               "layers": {s.name: s.bits_per_weight for s in report.layers}}
        if report.allocation is not None:
            row["allocation"] = {k: v for k, v in report.allocation.items() if k != "layers"}
            row["allocation"]["why"] = {n: r["why"] for n, r in report.allocation["layers"].items()}
        print(f"{method} {row['mode']} target {bits:.4f}: {report.bits_per_weight:.4f} b/w, ppl {ppl:.3f}, "
              f"quantize {qs:.0f} s", flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        del model


def plot(path: str, prefix: str, demo_json: str | None = None) -> None:
    """``<prefix>_ppl.png``: perplexity against measured bits (uniform and allocated per method);
    ``<prefix>_layers.png``: each allocated run's rate by layer type (rows) and depth (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(path) if line.strip()]
    if demo_json:
        methods = {r["method"] for r in rows}
        rows += [{**r, "mode": "uniform"} for r in json.load(open(demo_json))["results"] if r["method"] in methods]
    def series(r):  # allocated runs apart by metric
        metric = (r.get("allocation") or {}).get("metric")
        return r["mode"] if metric is None else f"{r['mode']} ({metric})"

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"uniform": "o--"}
    for method in dict.fromkeys(r["method"] for r in rows):
        for mode in dict.fromkeys(series(r) for r in rows if r["method"] == method):
            rs = sorted((r for r in rows if r["method"] == method and series(r) == mode),
                        key=lambda r: r["bits_per_weight"])
            ax.plot([r["bits_per_weight"] for r in rs], [r["perplexity"] for r in rs], styles.get(mode, "s-"),
                    label=f"{method} {mode}")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (measured from stored tensors)")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{prefix}_ppl.png", dpi=120)
    plt.close(fig)
    alloc = [r for r in rows if r["mode"] == "allocated"]
    if not alloc:
        return
    kinds = list(dict.fromkeys(n.rsplit(".", 1)[1] for n in alloc[0]["layers"]))
    fig, axes = plt.subplots(len(alloc), 1, figsize=(7, 2.2 * len(alloc)), squeeze=False)
    for ax, r in zip(axes[:, 0], alloc):
        for k in kinds:
            pts = sorted((int(n.split(".")[2]), b) for n, b in r["layers"].items() if n.endswith(k))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax.axhline(r["target_bits"], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(f"{r['method']} {series(r)}, target {r['target_bits']:.3f}: {r['bits_per_weight']:.3f} b/w, "
                     f"ppl {r['perplexity']:.3f}", fontsize=9)
        ax.set_ylabel("b/w")
    axes[-1, 0].set_xlabel("block")
    axes[0, 0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(f"{prefix}_layers.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
