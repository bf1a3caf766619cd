"""Seconds to pack and unpack fixed-width fields (``pvq.codecs.packing``), one torch thread.

    python benchmarks/packing_speed.py --count 10000000 --widths 3,4,12
"""

from __future__ import annotations

import argparse
import time

import torch

from pvq.codecs.packing import pack_bits, unpack_bits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000_000)
    p.add_argument("--widths", default="3,4,12")
    a = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for w in (int(x) for x in a.widths.split(",")):
        v = torch.randint(0, 1 << w, (a.count,), generator=g)
        t = time.perf_counter()
        b = pack_bits(v, w)
        tp = time.perf_counter() - t
        t = time.perf_counter()
        u = unpack_bits(b, w, a.count)
        tu = time.perf_counter() - t
        assert torch.equal(u, v)
        print(f"width {w:2d}: {a.count} values packed in {tp:.3f} s, unpacked in {tu:.3f} s")


if __name__ == "__main__":
    main()
