"""Load time of entropy-coded against fixed-rate stored codes, on one CPU core.

Builds the stored tensors of Llama-2-7B-shaped decoder blocks (q, k, v, o: 4096 x 4096;
gate, up: 11008 x 4096; down: 4096 x 11008) from random codes shaped like real ones
(GPTQ-style 3-bit uniform codes drawn from a rounded Gaussian, 8-bit zero points and fp16
scales per group of 128 weights), writes them as safetensors twice - as stored (fixed rate)
and entropy coded (``pvq.codecs.coded.entropy_code``, what ``--entropy-code`` writes) - and
times reading each back into the codec's normal stored layout with one thread: the fixed
file is read, the coded one read and decoded. Times are extrapolated to 32 blocks (7B).

    PYTHONPATH=$PWD python benchmarks/coded_load.py --blocks 1            # one 7B block (202M weights)
    PYTHONPATH=$PWD python benchmarks/coded_load.py --blocks 1 --scale 0.05  # rows cut to 5% (quick check)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from pvq.codecs.coded import entropy_code, entropy_decode
from pvq.codecs.scalar import UniformCodec

SHAPES = [("q_proj", 4096, 4096), ("k_proj", 4096, 4096), ("v_proj", 4096, 4096), ("o_proj", 4096, 4096),
          ("gate_proj", 11008, 4096), ("up_proj", 11008, 4096), ("down_proj", 4096, 11008)]
BLOCKS_7B = 32


def layer(codec: UniformCodec, out: int, inp: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    n = out * inp
    q = (torch.randn(n, 1, generator=gen) * 1.3 + 3.5).round().clamp(0, 7).to(torch.int64)
    groups = n // codec.group_size
    zero = torch.randint(2, 6, (groups,), generator=gen).repeat_interleave(codec.group_size)
    scales = (torch.rand(groups, generator=gen) * 0.01 + 0.001).half()
    return codec.store({"q": q, "zero": zero}, scales)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of each layer's rows (quick runs)")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    codec = UniformCodec(3, 1, 128)
    gen = torch.Generator().manual_seed(0)
    fixed, coded, specs = {}, {}, {}
    t = time.perf_counter()
    weights = 0
    for b in range(args.blocks):
        for name, out, inp in SHAPES:
            rows = max(1, int(out * args.scale))
            stored = layer(codec, rows, inp, gen)
            key = f"layers.{b}.{name}"
            for k, v in stored.items():
                fixed[f"{key}.{k}"] = v
            spec, blobs = entropy_code(codec, stored, rows * inp)
            specs[key] = (spec, rows * inp)
            for k, v in blobs.items():
                coded[f"{key}.{k}"] = v
            weights += rows * inp
    print(f"built {weights / 1e6:.1f}M weights of {args.blocks} block(s) (scale {args.scale}) and coded them "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        fpath, cpath = os.path.join(d, "fixed.safetensors"), os.path.join(d, "coded.safetensors")
        save_file(fixed, fpath)
        save_file(coded, cpath)
        fbytes, cbytes = os.path.getsize(fpath), os.path.getsize(cpath)
        t = time.perf_counter()
        got = load_file(fpath)
        t_fixed = time.perf_counter() - t
        t = time.perf_counter()
        blobs = load_file(cpath)
        t_read = time.perf_counter() - t
        for key, (spec, n) in specs.items():
            mine = {k[len(key) + 1:]: v for k, v in blobs.items() if k.startswith(key + ".")}
            _, tensors = entropy_decode(spec, mine, n)
            assert all(torch.equal(tensors[k], got[f"{key}.{k}"]) for k in tensors)  # bit-exact
        t_coded = time.perf_counter() - t
    scale = BLOCKS_7B / args.blocks / args.scale
    print(f"fixed rate: {fbytes * 8 / weights:.3f} bits/weight, read in {t_fixed:.2f} s "
          f"({fbytes / 2**20 / max(t_fixed, 1e-9):.0f} MiB/s)")
    print(f"coded:      {cbytes * 8 / weights:.3f} bits/weight, read {t_read:.2f} s + decode "
          f"{t_coded - t_read:.2f} s = {t_coded:.2f} s ({weights / 1e6 / (t_coded - t_read):.1f} M weights/s decoded)")
    print(f"extrapolated to 7B ({BLOCKS_7B} blocks, x{scale:g}): fixed {t_fixed * scale:.0f} s, coded "
          f"{t_coded * scale:.0f} s on one core (the file read is from the page cache here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
