"""Compile the D = 8 CUDA products for sm_90 without a GPU and print, per instantiation, registers, spilled
bytes and the SASS instructions of the main loop per decoded vector.

    python benchmarks/compile_cuda_report.py [--arch 90] [--sources split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu,...]
        [--define NAME=VALUE ...]
    python benchmarks/compile_cuda_report.py --whole [--phases] [--sources ...] [--define ...]

``--whole`` compiles each extension as the GPU machine builds it, host code and bindings included, against torch's
headers (the CPU wheel lacks the CUDA libraries' headers those include: stub declarations of the few types they
name stand in) and prints whether each compiles: a check, before a GPU call, that a change still builds (a source
that stops compiling only warns on the GPU and its layers fall back to slower paths; sessions 18-19). ``--phases``
also prints the seconds of each nvcc phase (``nvcc --time``: cicc optimizes the device code, ptxas assembles it, gcc
the host code) and the source's wall time: what sets an extension's first-use build (session 35). A source may be a
path outside ``pvq/kernels/csrc`` (an older version, e.g. from ``git show``), bound by the package's bindings of its
name.

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


# The CUDA libraries' types that torch's CUDA headers name (the CPU wheel ships those headers, not these)
_STUBS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def compile_whole(source: str, arch: int, defines: tuple[str, ...], phases: bool = False) -> bool:
    """Compiles ``source`` and its bindings (``x_bind.cpp``; none for another source of an extension, ``x.part.cu``)
    with torch's and Python's headers; prints the first errors, and where ``phases`` each nvcc phase's seconds.
    Returns whether both compiled."""
    import sysconfig
    import time

    import torch

    from pvq.kernels.cuda_build import bindings_of, is_part

    include = os.path.join(os.path.dirname(torch.__file__), "include")
    with tempfile.TemporaryDirectory() as d:
        for name, text in _STUBS.items():
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            with open(os.path.join(d, name), "w") as f:
                f.write("#pragma once\n" + text)
        flags = ["-std=c++17", f"-I{include}", f"-I{os.path.join(include, 'torch', 'csrc', 'api', 'include')}",
                 f"-I{sysconfig.get_paths()['include']}", f"-I{d}", f"-I{CSRC}", "-DTORCH_EXTENSION_NAME=check",
                 *(f"-D{x}" for x in defines)]
        bind = bindings_of(source)
        timing = os.path.join(d, "phases.csv")
        ok = True
        cmds = [["nvcc", f"-arch=sm_{arch}", "-O3", *flags, *(["--time", timing] if phases else []), "-c", source,
                 "-o", os.path.join(d, "k.o")]]
        if not is_part(source):  # x.cu has bindings, its parts x.part.cu none
            cmds.append([shutil.which("g++") or "c++", "-fsyntax-only", *flags, bind])
        for cmd in cmds:
            t = time.perf_counter()
            r = subprocess.run(cmd, cwd=CSRC, capture_output=True, text=True)
            errors = [line for line in r.stderr.splitlines() if "error" in line]
            if r.returncode:
                ok = False
                print(f"# {source if cmd[0] == 'nvcc' else bind}: failed\n" + "\n".join(errors[:8]))
            elif phases and cmd[0] == "nvcc":
                print(f"# {source}: nvcc {time.perf_counter() - t:.1f} s wall; " + nvcc_phases(timing))
        return ok


def nvcc_phases(csv_path: str) -> str:
    """``nvcc --time``'s file as "phase seconds, ..." (the phases of one compile, in their order)."""
    out = []
    for line in open(csv_path).read().splitlines()[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 8 and cells[-1] == "ms" and cells[1] != "nvcc (driver)":
            out.append(f"{cells[1]} {float(cells[-2]) / 1000:.1f} s")
    return ", ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--sources", default="split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu,leafrow8_gemv.mma.cu,"
                   "leafrow8_gemv.quad_mma.cu")
    p.add_argument("--define", action="append", default=[], help="NAME=VALUE: an experiment's build (as "
                   "speed_layout_device.py --rows-variant builds it)")
    p.add_argument("--whole", action="store_true",
                   help="compile each extension with its host code and bindings (stub CUDA-library headers)")
    p.add_argument("--phases", action="store_true", help="with --whole: the seconds of each nvcc phase")
    a = p.parse_args()
    if a.phases and not a.whole:
        p.error("--phases times the whole build: add --whole")
    if a.whole:
        sources = a.sources.split(",") if a.sources != p.get_default("sources") else sorted(
            f for f in os.listdir(CSRC) if f.endswith(".cu"))
        results = {source: compile_whole(source, a.arch, tuple(a.define), a.phases) for source in sources}
        print(", ".join(f"{s}: {'compiles' if ok else 'FAILED'}" for s, ok in results.items()))
        raise SystemExit(0 if all(results.values()) else 1)
    print("| source | x | instance | registers | spilled bytes | loop SASS | per vector | LDS per vector | "
          "LDG per vector |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in a.sources.split(","):
        report(source, a.arch, tuple(a.define))


if __name__ == "__main__":
    main()
