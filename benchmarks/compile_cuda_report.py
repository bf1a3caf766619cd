"""Compile the D = 8 CUDA products for sm_90 without a GPU and print, per instantiation, registers, spilled
bytes and the SASS instructions of the main loop per decoded vector.

    python benchmarks/compile_cuda_report.py [--arch 90] [--sources split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu,...]
        [--define NAME=VALUE ...]
    python benchmarks/compile_cuda_report.py --whole [--sources ...] [--define ...]

``--whole`` compiles each extension as the GPU machine builds it, host code and bindings included, against torch's
headers (the CPU wheel lacks the CUDA libraries' headers those include: stub declarations of the few types they
name stand in) and prints whether each compiles: a check, before a GPU call, that a change still builds (a source
that stops compiling only warns on the GPU and its layers fall back to slower paths; sessions 18-19).

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


def compile_whole(source: str, arch: int, defines: tuple[str, ...]) -> bool:
    """Compiles ``source`` and its bindings (``x_bind.cpp``; none for another source of an extension, ``x.part.cu``)
    with torch's and Python's headers; prints the first errors. Returns whether both compiled."""
    import sysconfig

    import torch

    from pvq.kernels.cuda_build import is_part

    include = os.path.join(os.path.dirname(torch.__file__), "include")
    with tempfile.TemporaryDirectory() as d:
        for name, text in _STUBS.items():
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            with open(os.path.join(d, name), "w") as f:
                f.write("#pragma once\n" + text)
        flags = ["-std=c++17", f"-I{include}", f"-I{os.path.join(include, 'torch', 'csrc', 'api', 'include')}",
                 f"-I{sysconfig.get_paths()['include']}", f"-I{d}", f"-I{CSRC}", "-DTORCH_EXTENSION_NAME=check",
                 *(f"-D{x}" for x in defines)]
        bind = source[: -len(".cu")] + "_bind.cpp"
        ok = True
        cmds = [["nvcc", f"-arch=sm_{arch}", "-O3", *flags, "-c", source, "-o", os.path.join(d, "k.o")]]
        if not is_part(source):  # x.cu has bindings, its parts x.part.cu none
            cmds.append([shutil.which("g++") or "c++", "-fsyntax-only", *flags, bind])
        for cmd in cmds:
            r = subprocess.run(cmd, cwd=CSRC, capture_output=True, text=True)
            errors = [line for line in r.stderr.splitlines() if "error" in line]
            if r.returncode:
                ok = False
                print(f"# {cmd[-3] if cmd[0] == 'nvcc' else bind}: failed\n" + "\n".join(errors[:8]))
        return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--sources", default="split8_gemv.cu,leaf8_gemv.cu,leafrow8_gemv.cu,leafrow8_gemv.mma.cu,"
                   "leafrow8_gemv.quad_mma.cu")
    p.add_argument("--define", action="append", default=[], help="NAME=VALUE: an experiment's build (as "
                   "speed_layout_device.py --rows-variant builds it)")
    p.add_argument("--whole", action="store_true",
                   help="compile each extension with its host code and bindings (stub CUDA-library headers)")
    a = p.parse_args()
    if a.whole:
        sources = a.sources.split(",") if a.sources != p.get_default("sources") else sorted(
            f for f in os.listdir(CSRC) if f.endswith(".cu"))
        results = {source: compile_whole(source, a.arch, tuple(a.define)) for source in sources}
        print(", ".join(f"{s}: {'compiles' if ok else 'FAILED'}" for s, ok in results.items()))
        raise SystemExit(0 if all(results.values()) else 1)
    print("| source | x | instance | registers | spilled bytes | loop SASS | per vector | LDS per vector | "
          "LDG per vector |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in a.sources.split(","):
        report(source, a.arch, tuple(a.define))


if __name__ == "__main__":
    main()
