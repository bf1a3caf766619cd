"""Compile the split-order PVQ kernels (or the rows layout's prefill decode) for an NVIDIA target without a GPU and
print their resource use.

    python benchmarks/compile_report.py [--arch 90] [--dim 8] [--bits 3]
    python benchmarks/compile_report.py --kernels rows   # the rows layout's whole-layer decode

Registers per thread, spilled bytes and shared memory per kernel and tile
configuration, read from Triton's compiled metadata (ptxas); the PTX/SASS are
written next to it with ``--dump DIR``. Runs on a CPU-only machine: it is
what can be learned about the kernels' cost without device time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pvq.codecs import make_codec  # noqa: E402
from pvq.codecs.pyramid_counts import _count_table  # noqa: E402
from pvq.kernels import triton_split as TS  # noqa: E402

PTRS = {"words_ptr": "*i32", "scales_ptr": "*fp16", "levels_ptr": "*fp32", "counts_ptr": "*i64",
        "off16_ptr": "*i64", "off8_ptr": "*i64", "leaf_off_ptr": "*i64", "leaves_ptr": "*i32",
        "inv4_ptr": "*fp64", "inv8_ptr": "*fp64", "inv_norm_ptr": "*fp32",
        "x_ptr": "*fp16", "y_ptr": "*fp32", "out_ptr": "*fp16", "inv_ptr": "*fp32"}


def consts(dim: int, bits: float) -> dict:
    codec = make_codec("pvq", bits, dim, group_size=16)
    counts = [r[codec.pulses] for r in _count_table(dim, codec.pulses)]
    return dict(D=dim, K=codec.pulses, G=16,
                L=codec.gain.num_levels, CODE_BITS=codec.code_bits, WIDE=counts[dim] >= 1 << 30,
                WIDE_HALF=counts[dim // 2] >= 1 << 30, STEPS=max(1, (codec.pulses + 1).bit_length()))


def compile_one(fn, extra: dict, arch: int, num_warps: int, dump: str | None, tag: str):
    names = fn.arg_names
    const = {k: v for k, v in extra.items() if k in names}
    sig = {n: ("constexpr" if n in const else PTRS.get(n, "i32")) for n in names}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()})
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    if dump:
        os.makedirs(dump, exist_ok=True)
        for ext in ("ptx", "ttgir"):
            if ext in k.asm:
                with open(os.path.join(dump, f"{tag}.{ext}"), "w") as f:
                    f.write(k.asm[ext])
    return _ptxas_report(k.asm["ptx"], arch) + (k.metadata.shared,)


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill-store bytes, SASS instructions) from the ptxas bundled with Triton."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}a", f.name, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1) + (_sass_count(ptxas, ptx, arch),)


def _sass_count(ptxas: str, ptx: str, arch: int) -> int:
    """SASS instructions of the compiled kernel (cuobjdump beside ptxas)."""
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        subprocess.run([ptxas, f"--gpu-name=sm_{arch}a", src, "-o", cubin], check=True, capture_output=True)
        sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "cuobjdump"), "-sass", cubin],
                              capture_output=True, text=True).stdout
    return len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, flags=re.M))


ROWS_FORMATS = (("3 b leaf pairs", dict(F=22, A=8, LG=2, POINTS=False)), ("2 b whole points",
                                                                        dict(F=16, A=14, LG=1, POINTS=True)))
"""Field widths of the 7B model's rows layouts (docs/kernels.md, sessions 8 and 23)."""


ROWS_WARPS = (4, 8)
"""Warps of the decode compiled (the package's: 4; 8, and 2 or 4 tiles a program, measured no faster on an H100 in
session 33: docs/kernels.md)."""


def rows_report(arch: int, dump: str | None) -> None:
    """Resources of :mod:`pvq.kernels.triton_rows`' whole-layer decode in each format (fp16; bf16 compiles alike).
    (Session 28's table, docs/bench/compile_rows_s28_cpu.txt, also held the fused product that left.)"""
    from pvq.kernels import triton_rows as TR

    print("| kernel | format | warps | registers | spilled bytes | SASS instructions | shared bytes |")
    print("|---|---|---|---|---|---|---|")
    for label, fields in ROWS_FORMATS:
        for warps in ROWS_WARPS:
            r = compile_one(TR._rows_decode_kernel, {**fields, "BF16": False, "QUADS": False}, arch, warps,
                            dump, f"rows_decode_{label[:1]}_{warps}")
            print(f"| decode | {label} | {warps} | {r[0]} | {r[1]} | {r[2]} | {r[3]} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dims", default="8,16")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--dump", default=None)
    p.add_argument("--kernels", default="split", choices=("split", "rows"))
    a = p.parse_args()
    if a.kernels == "rows":
        rows_report(a.arch, a.dump)
        return
    print("| kernel | D | bits | tile | warps | registers | spilled bytes | SASS instructions | shared bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dim in (int(d) for d in a.dims.split(",")):
        for bits in (float(b) for b in a.bits.split(",")):
            try:
                c = consts(dim, bits)
            except Exception as e:  # noqa: BLE001
                print(f"# D={dim} {bits} bits: {e}")
                continue
            if c["CODE_BITS"] > 62:
                continue
            for block in (64, 128):
                for warps in (4,):
                    r = compile_one(TS._split_decode_kernel, {**c, "BLOCK": block}, a.arch, warps, a.dump,
                                    f"decode_d{dim}_b{bits}_{block}")
                    print(f"| decode | {dim} | {bits} | {block} vectors | {warps} | {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
            for bp in (1, 16):
                for block_o, nv in ((16, 16), (32, 16), (64, 16)):
                    extra = {**c, "VPR": 4096 // dim, "VPS": 4096 // dim // 4, "BLOCK_O": block_o, "NV": nv,
                             "BP": bp, "ATOMIC": True}
                    r = compile_one(TS._split_matmul_kernel, extra, a.arch, 4, a.dump,
                                    f"matmul_d{dim}_b{bits}_bp{bp}_{block_o}x{nv}")
                    print(f"| matmul B{'=1' if bp == 1 else '<=16'} | {dim} | {bits} | {block_o}x{nv} | 4 | "
                          f"{r[0]} | {r[1]} | {r[2]} | {r[3]} |", flush=True)


if __name__ == "__main__":
    main()
