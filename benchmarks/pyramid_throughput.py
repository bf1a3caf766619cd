"""PVQ encode/decode throughput (vectors per second), vectorized paths vs Python-int references.

    python benchmarks/pyramid_throughput.py [--device cpu|cuda] [--vectors N] [--json]

encode = pyramid search + rank + gain code (PyramidCodec.encode);
decode = unrank + gain + reconstruction (PyramidCodec.decode);
rank / unrank alone are also timed; the reference columns time the plain
Python-int rank/unrank on a subsample. Prints a table (or JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pvq.codecs import make_codec
from pvq.codecs.pyramid import (
    pyramid_rank,
    pyramid_rank_reference,
    pyramid_unrank,
    pyramid_unrank_reference,
)
from pvq.eval.report import format_table

SETTINGS = [(8, 2.0), (8, 4.0), (32, 2.0), (32, 3.0), (32, 4.0), (128, 2.0), (128, 3.0)]


def _timed(fn, sync):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def bench(device: str, vectors: int, reference_vectors: int) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for dim, bits in SETTINGS:
        codec = make_codec("pvq", bits, dim)
        n = max(codec.group_size, vectors // codec.group_size * codec.group_size)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, dim, generator=gen).to(device)
        scale = codec.group_scales(x.view(-1, codec.group_size, dim)).repeat_interleave(codec.group_size)
        codec.decode(codec.encode(x[: codec.group_size], scale[: codec.group_size]), scale[: codec.group_size])
        codes, t_enc = _timed(lambda: codec.encode(x, scale), sync)
        _, t_dec = _timed(lambda: codec.decode(codes, scale), sync)
        y = codec.shapes(x)
        _, t_rank = _timed(lambda: pyramid_rank(y, codec.pulses), sync)
        _, t_unrank = _timed(lambda: pyramid_unrank(codes["index"], dim, codec.pulses), sync)
        sub = y[:reference_vectors].cpu().tolist()
        start = time.perf_counter()
        idx = [pyramid_rank_reference(row, codec.pulses) for row in sub]
        t_ref_rank = time.perf_counter() - start
        start = time.perf_counter()
        for i in idx:
            pyramid_unrank_reference(i, dim, codec.pulses)
        t_ref_unrank = time.perf_counter() - start
        rows.append(
            {
                "dim": dim,
                "bits": bits,
                "pulses": codec.pulses,
                "index_bits": codec.code_bits,
                "vectors": n,
                "encode_vps": n / t_enc,
                "decode_vps": n / t_dec,
                "rank_vps": n / t_rank,
                "unrank_vps": n / t_unrank,
                "ref_rank_vps": len(sub) / t_ref_rank,
                "ref_unrank_vps": len(sub) / t_ref_unrank,
                "decode_weights_per_s": n * dim / t_dec,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vectors", type=int, default=1 << 16)
    p.add_argument("--reference-vectors", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = bench(args.device, args.vectors, args.reference_vectors)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    if args.json:
        print(json.dumps({"device": where, "results": rows}))
        return
    print(f"PVQ throughput on {args.device} ({where}), torch {torch.__version__}; vectors/s")
    print(
        format_table(
            rows,
            [
                ("dim", "D", "d"),
                ("bits", "bpw", ".0f"),
                ("pulses", "K", "d"),
                ("index_bits", "code bits", "d"),
                ("encode_vps", "encode", ",.0f"),
                ("decode_vps", "decode", ",.0f"),
                ("rank_vps", "rank", ",.0f"),
                ("unrank_vps", "unrank", ",.0f"),
                ("ref_rank_vps", "rank (ref)", ",.0f"),
                ("ref_unrank_vps", "unrank (ref)", ",.0f"),
            ],
        )
    )


if __name__ == "__main__":
    main()
