"""Compile the D = 8 CUDA products for sm_90 without a GPU and print, per instantiation, registers, spilled
bytes and the SASS instructions of the main loop per decoded vector.

    python benchmarks/compile_cuda_report.py [--arch 90] [--sources split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu]
        [--define NAME=VALUE ...]

Each source is compiled with ``nvcc -DPVQ_KERNEL_ONLY`` (the kernels and their listed instantiations, without
torch), disassembled with the ``cuobjdump`` that ships with Triton, and the innermost loop with (nearly) the most half2 /
float multiply-adds is taken as the main loop; its instruction count is divided by the vectors one pass decodes a lane
(NV x RU for the vector-a-lane kernels, 16 for the row-interleaved one). What the compiler emits, not what the
GPU runs: the loop's share of the executed instructions is the larger the more steps a block runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pvq", "kernels", "csrc")


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def main_loops(body: str) -> list[tuple[int, dict[str, int]]]:
    """(instructions, opcode counts) of every backward branch's loop in one function's SASS."""
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", body)]
    out = []
    for addr, text in ins:
        m = re.search(r"BRA .*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            seg = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
            ops: dict[str, int] = {}
            for t in seg:
                op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                ops[op] = ops.get(op, 0) + 1
            out.append((len(seg), ops))
    return out


def report(source: str, arch: int, defines: tuple[str, ...] = ()) -> None:
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        r = subprocess.run(["nvcc", "-DPVQ_KERNEL_ONLY", *(f"-D{d}" for d in defines), f"-arch=sm_{arch}", "-O3",
                            "-std=c++17", "--resource-usage", "-cubin", "-o", cubin, source], cwd=CSRC,
                           capture_output=True, text=True)
        if r.returncode:
            print(f"# {source}: nvcc failed\n{r.stderr[-2000:]}")
            return
        sass = subprocess.run([cuobjdump(), "-sass", cubin], capture_output=True, text=True).stdout
    usage, name = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            usage.setdefault(name, {})["spill"] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage.setdefault(name, {})["regs"] = int(m.group(1))
    parts = re.split(r"\n\s*Function : (\S+)", sass)
    for name, body in zip(parts[1::2], parts[2::2]):
        m = re.search(r"kernelI(.*?)EEEv", name)
        if m is None:  # a kernel without instances (the whole-layer decode)
            continue
        args = m.group(1)
        dtype = "float" if args.startswith("f") else ("bf16" if "bfloat16" in args else "half")
        nums = [int(v) for v in re.findall(r"Li(\d+)E?", args)]
        loops = main_loops(body)
        if not loops:
            continue
        fma = [lp[1].get("HFMA2", 0) + lp[1].get("FFMA", 0) for lp in loops]
        n, ops = min((lp for lp, f in zip(loops, fma) if f >= 0.9 * max(fma)), key=lambda lp: lp[0])  # innermost
        if "leafrow" in name and "PointFields" in args:  # whole points: <T, PointFields<LG>, B, ...>
            lg, rows = nums[:2]
            tag, per = f"points LG={lg} F=16 B={rows}", 16
        elif "leafrow" in name:  # leaf pairs: <T, Fields<LG, F>, B, ...>
            lg, width, rows = nums[:3]
            tag, per = f"LG={lg} F={width} B={rows}", 16
        else:
            lv, nv, ru, rows = nums[-4:]
            tag, per = f"L/LG={lv} NV={nv} RU={ru} B={rows}", nv * ru
        u = usage.get(name, {})
        print(f"| {source} | {dtype} | {tag} | {u.get('regs')} | {u.get('spill')} | {n} | {n / per:.1f} | "
              f"{ops.get('LDS', 0) / per:.1f} | {ops.get('LDG', 0) / per:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--sources", default="split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu")
    p.add_argument("--define", action="append", default=[], help="NAME=VALUE: an experiment's build (e.g. "
                   "PVQ_POINT_NORMS=1, as speed_layout_device.py --rows-variant builds it)")
    a = p.parse_args()
    print("| source | x | instance | registers | spilled bytes | loop SASS | per vector | LDS per vector | "
          "LDG per vector |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in a.sources.split(","):
        report(source, a.arch, tuple(a.define))


if __name__ == "__main__":
    main()
