"""What a 512-token prefill pays for pvq's whole-layer decode, and two ways to pay less (docs/kernels.md, session 32).

    python benchmarks/prefill_decode.py [--rows 512,2048] [--bits 3,2] [--blocks 2] [--tiles 1x4,1x8,2x4,2x8,4x4]
    TRITON_INTERPRET=1 python benchmarks/prefill_decode.py --device cpu --small   # a smoke test; times mean nothing

Above 16 rows the ``triton`` backend decodes each layer to fp16 (``leaf_rows_decode_triton``) and multiplies by
cuBLAS; at 512 rows of a 7B model the decode was 6.27 of 22.8 ms of GPU time on an H100 (session 27). Two tables:

* **Decode tiles**: the decode of each 7B product shape (random valid codes, the layouts the 7B model runs: leaf
  pairs at 3 bits, whole points at 2) with ``S`` steps (``[32, 128]`` tiles) a program and ``W`` warps (``SxW``;
  ``1x4`` is the package's), microseconds replayed from CUDA graphs and the bandwidth of its bytes (fp16 written,
  codes read) beside filling the fp16 layer (the floor of any decode that writes it). Every variant's layer is first
  compared bit for bit with the package's.
* **Overlap**: ``--blocks`` 7B blocks' four products (q/k/v merged 12288x4096, o 4096x4096, gate/up merged
  22016x4096, down 4096x11008) at each ``--rows``, one after another in one CUDA graph: fp16 (cuBLAS alone), the
  decodes alone, pvq as the backend runs it (decode, then cuBLAS) and pvq with each next product's decode on a second
  stream while cuBLAS multiplies the current one (two fp16 buffers): the decode is bound by memory, a 512-row product
  by the tensor cores, so what the GPU overlaps comes off the prefill.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _device import benchmark_device, captured_graph, device_name, median_event_ms  # noqa: E402
from pvq.kernels.leaf_rows import leaf_rows_from_split  # noqa: E402

T0 = time.perf_counter()

BLOCK_SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))
"""A merged 7B block's products in the order a forward runs them: ``(out, in)``."""

SMALL_SHAPES = ((96, 256), (32, 256), (160, 256), (32, 384))


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def parse_tiles(text: str) -> list[tuple[int, int]]:
    """``"1x4,2x8"`` -> [(1, 4), (2, 8)]: steps a program x warps (warps 1, 2, 4, 8 or 16); ValueError otherwise."""
    tiles = []
    for item in text.split(","):
        try:
            s, w = (int(v) for v in item.split("x"))
        except ValueError:
            raise ValueError(f"a tile is STEPSxWARPS, e.g. 2x8; got {item!r}") from None
        if s < 1 or w not in (1, 2, 4, 8, 16):
            raise ValueError(f"a tile's steps are >= 1 and its warps 1, 2, 4, 8 or 16; got {item!r}")
        tiles.append((s, w))
    return tiles


def random_rows_runtime(bits: float, out_f: int, in_f: int, seed: int, device):
    """The 7B model's rows layout of ``[out_f, in_f]`` with random valid codes: leaf pairs above 2 bits, whole
    points at up to 2 (speed_layout_device.py's random codes)."""
    from speed_layout_device import random_split_runtime

    return leaf_rows_from_split(random_split_runtime(bits, 16, out_f, in_f, seed, device), whole_points=bits <= 2)


def timer(device):
    """``time(fn) -> microseconds`` of one call: replayed from a CUDA graph (median), or wall time off CUDA."""
    if device.type != "cuda":
        def wall(fn) -> float:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e6
        return wall

    def replayed(fn, reps: int = 10) -> float:
        graph = captured_graph(fn, device)
        us = median_event_ms(graph.replay, reps) * 1e3
        del graph
        return us
    return replayed


def decode_tiles(shapes, bit_list, tiles, device) -> None:
    """The decode tiles table (module docstring)."""
    from pvq.kernels.triton_rows import leaf_rows_decode_triton

    time_us = timer(device)
    head = [f"{s}x{w}" for s, w in tiles]
    print("\n| layer | bits | code MB | fill us | " + " | ".join(f"{h} us (TB/s)" for h in head) + " |")
    print("|---|---|---|---|" + "---|" * len(head))
    for out_f, in_f in shapes:
        buffer = torch.empty(out_f, in_f, dtype=torch.float16, device=device)
        fill = time_us(lambda: buffer.fill_(1.0))
        for bits in bit_list:
            rt = random_rows_runtime(bits, out_f, in_f, seed=out_f + in_f, device=device)
            reference = leaf_rows_decode_triton(rt, torch.float16)
            code_bytes = rt.code_bytes()
            cells = []
            for s, w in tiles:
                leaf_rows_decode_triton(rt, torch.float16, buffer, steps_per_program=s, num_warps=w)
                if not torch.equal(buffer, reference):
                    cells.append("differs")
                    continue
                us = time_us(lambda: leaf_rows_decode_triton(rt, torch.float16, buffer, steps_per_program=s,
                                                             num_warps=w))
                cells.append(f"{us:.1f} ({(buffer.numel() * 2 + code_bytes) / us / 1e6:.2f})")
            say(f"{out_f}x{in_f} {bits} bits: " + ", ".join(f"{h} {c}" for h, c in zip(head, cells)))
            print(f"| {out_f}x{in_f} | {bits:g} | {code_bytes / 1e6:.1f} | {fill:.1f} | " + " | ".join(cells) + " |",
                  flush=True)
            del rt, reference
        del buffer


class Products:
    """``blocks`` blocks' products at ``rows`` rows: fp16 weights, pvq runtimes, inputs, outputs, two decode buffers
    of the largest layer and a second stream."""

    def __init__(self, shapes, blocks: int, rows: int, bits: float, device):
        self.device = device
        layers = [shape for _ in range(blocks) for shape in shapes]
        self.weights = [(torch.randn(o, i, device=device) * 0.02).half() for o, i in layers]
        self.runtimes = [random_rows_runtime(bits, o, i, seed=n, device=device) for n, (o, i) in enumerate(layers)]
        self.x = [torch.randn(rows, i, device=device).half() for _, i in layers]
        self.y = [torch.empty(rows, o, device=device, dtype=torch.float16) for o, _ in layers]
        largest = max(o * i for o, i in layers)
        self.buffers = [torch.empty(largest, device=device, dtype=torch.float16) for _ in range(2)]
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ready = [torch.cuda.Event() if device.type == "cuda" else None for _ in layers]

    def _decode(self, n: int, slot: int) -> torch.Tensor:
        from pvq.kernels.triton_rows import leaf_rows_decode_triton

        rt = self.runtimes[n]
        out = self.buffers[slot][: rt.out_features * rt.in_features].view(rt.out_features, rt.in_features)
        return leaf_rows_decode_triton(rt, torch.float16, out)

    def fp16(self) -> None:
        for x, w, y in zip(self.x, self.weights, self.y):
            torch.matmul(x, w.T, out=y)

    def decodes(self) -> None:
        for n in range(len(self.runtimes)):
            self._decode(n, 0)

    def sequential(self) -> None:
        for n, (x, y) in enumerate(zip(self.x, self.y)):
            torch.matmul(x, self._decode(n, 0).T, out=y)

    def overlapped(self) -> None:
        """Product n's decode into buffer n % 2 on the side stream while product n - 1 multiplies on this one."""
        if self.side is None:
            return self.sequential()
        main = torch.cuda.current_stream(self.device)
        decoded = [None] * len(self.runtimes)
        self.side.wait_stream(main)
        with torch.cuda.stream(self.side):
            decoded[0] = self._decode(0, 0)
            self.ready[0].record(self.side)
        for n, (x, y) in enumerate(zip(self.x, self.y)):
            main.wait_event(self.ready[n])
            if n + 1 < len(self.runtimes):
                self.side.wait_stream(main)  # the buffer it writes was read by product n - 1, queued on main
                with torch.cuda.stream(self.side):
                    decoded[n + 1] = self._decode(n + 1, (n + 1) % 2)
                    self.ready[n + 1].record(self.side)
            torch.matmul(x, decoded[n].T, out=y)
        main.wait_stream(self.side)

    def check(self) -> float:
        """Largest difference between the two pvq orders' outputs (they multiply the same decoded layers)."""
        self.sequential()
        first = [y.clone() for y in self.y]
        self.overlapped()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return max((a.float() - b.float()).abs().max().item() for a, b in zip(first, self.y))


def overlap(shapes, blocks: int, row_list, bit_list, device) -> None:
    """The overlap table (module docstring)."""
    time_us = timer(device)
    print(f"\n| rows | bits | fp16 ms | decodes alone ms | pvq decode then cuBLAS ms (x fp16) | "
          f"pvq next decode overlapped ms (x fp16) | decode hidden |")
    print("|---|---|---|---|---|---|---|")
    for rows in row_list:
        for bits in bit_list:
            p = Products(shapes, blocks, rows, bits, device)
            diff = p.check()
            if diff != 0:
                say(f"{rows} rows {bits} bits: the overlapped order's outputs differ from the plain order's by {diff}")
            t = {name: time_us(getattr(p, name)) / 1e3 / blocks for name in ("fp16", "decodes", "sequential",
                                                                               "overlapped")}
            hidden = (t["sequential"] - t["overlapped"]) / t["decodes"] if t["decodes"] else 0.0
            say(f"{rows} rows {bits} bits, ms a block: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
            print(f"| {rows} | {bits:g} | {t['fp16']:.3f} | {t['decodes']:.3f} | {t['sequential']:.3f} "
                  f"({t['sequential'] / t['fp16']:.2f}) | {t['overlapped']:.3f} ({t['overlapped'] / t['fp16']:.2f}) | "
                  f"{100 * hidden:.0f}% |", flush=True)
            del p
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="512,2048", help="input rows of the overlap table")
    p.add_argument("--bits", default="3,2", help="rates (3: leaf pairs, 2: whole points)")
    p.add_argument("--blocks", type=int, default=2, help="7B blocks in the overlap table's graph")
    p.add_argument("--tiles", default="1x4,1x8,2x4,2x8,4x4,4x8", help="decode tiles, STEPSxWARPS, comma-separated")
    p.add_argument("--tables", default="tiles,overlap", help="tiles, overlap or both")
    p.add_argument("--device", default=None, help="default cuda; cpu only under TRITON_INTERPRET=1 (a smoke test)")
    p.add_argument("--small", action="store_true", help="tiny shapes (the CPU smoke test)")
    a = p.parse_args()
    try:
        rows = [int(r) for r in a.rows.split(",")]
        bit_list = [float(b) for b in a.bits.split(",")]
        tiles = parse_tiles(a.tiles)
    except ValueError as e:
        p.error(str(e))
    tables = a.tables.split(",")
    if not tables or set(tables) - {"tiles", "overlap"}:
        p.error(f"--tables takes tiles, overlap or both; got {a.tables}")
    if any(b not in (2.0, 3.0) for b in bit_list):
        p.error(f"--bits takes 2 and 3 (the 7B model's layouts); got {a.bits}")
    if a.blocks < 1 or any(r < 1 for r in rows):
        p.error("--blocks and --rows are positive")
    device = benchmark_device(p, a.device)
    shapes = SMALL_SHAPES if a.small else BLOCK_SHAPES
    say(f"device {device_name(device)}, torch {torch.__version__}")
    if "tiles" in tables:
        decode_tiles(shapes, bit_list, tiles, device)
    if "overlap" in tables:
        overlap(shapes, a.blocks, rows, bit_list, device)
    say("done")


if __name__ == "__main__":
    main()
