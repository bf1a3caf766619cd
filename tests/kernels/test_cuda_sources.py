"""The CUDA sources' host code never throws: each ``.cu`` of ``pvq/kernels/csrc`` reports a failed check as a
``pvq::Status`` and its ``*_bind.cpp`` (built by the C++ compiler) returns it beside the result for Python to raise
(``csrc/bind_status.h``, ``cuda_build.StatusExtension``; ``csrc/host_status.h``: an exception thrown out of an extension
killed the process on the H200 machine). Checked on the sources, on the CPU."""

import os
import re

import pytest

from pvq.kernels.cuda_build import CSRC, bindings_of, cuda_build_available, is_part, parts_of

CUDA = sorted(f for f in os.listdir(CSRC) if f.endswith(".cu"))
SOURCES = [f for f in CUDA if not is_part(f)]  # an extension's first source, x.cu (its parts: x.*.cu)


def code_of(name: str) -> str:
    """The text of ``CSRC/name`` without its ``//`` comments (which may say what is not done)."""
    return re.sub(r"//[^\n]*", "", open(os.path.join(CSRC, name)).read())


def test_the_four_extensions_are_there():
    assert SOURCES == ["hadamard_rows.cu", "leaf8_gemv.cu", "leafrow8_gemv.cu", "split8_gemv.cu"]


def test_every_part_belongs_to_an_extension():
    """leafrow8_gemv.cu's kernels are split over three sources that ninja compiles side by side (session 35); every
    other ``.cu`` is the first source of an extension."""
    parts = {os.path.basename(p) for s in SOURCES for p in parts_of(os.path.join(CSRC, s))}
    assert parts == {"leafrow8_gemv.mma.cu", "leafrow8_gemv.quad_mma.cu"}
    assert sorted(parts | set(SOURCES)) == CUDA
    assert parts_of(os.path.join(CSRC, "leaf8_gemv.cu")) == []  # leaf8_ is not leafrow8_'s prefix


def test_each_entry_point_is_defined_in_one_source_of_its_extension():
    """host_api.h's entry points are defined once across an extension's sources (a part that lost one would build
    and fail at import with an undefined symbol, seen only on a GPU machine)."""
    declared = re.findall(r"^Status (\w+)\(", open(os.path.join(CSRC, "host_api.h")).read(), re.M)
    defined = [name for f in CUDA for name in re.findall(r"^Status (\w+)\(", code_of(f), re.M)]
    assert sorted(defined) == sorted(declared) and len(declared) >= 8


@pytest.mark.parametrize("source", CUDA)
def test_nvcc_code_neither_throws_nor_binds(source):
    code = code_of(source)
    for banned in ("throw", "TORCH_CHECK", "c10::Error", "PYBIND11_MODULE", "AT_ERROR", "catch"):
        assert banned not in code, f"{source} uses {banned}: report a pvq::Status instead (host_status.h)"
    assert '#include "host_api.h"' in code


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_has_bindings_that_raise_its_status(source):
    path = bindings_of(os.path.join(CSRC, source))
    text = open(path).read()
    assert "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)" in text and '#include "bind_status.h"' in text
    # every bound entry point raises its status through bind_status.h's wrappers
    defs = re.findall(r"m\.def\(\s*\"(\w+)\",\s*([^,]+)", text)
    assert defs and text.count("m.def(") == len(defs), path
    for name, target in defs:
        assert re.fullmatch(r"pvq::returning_(tensor|none)\(&pvq::\w+\)", target.strip()), (
            f"{name} is bound as {target!r}: bind it through pvq::returning_tensor / returning_none")


HEAVY_TORCH_HEADERS = ("<torch/extension.h>", "<torch/types.h>", "<torch/torch.h>", "<ATen/ATen.h>",
                       "<ATen/cuda/CUDAContext.h>")


@pytest.mark.parametrize("source", sorted(f for f in os.listdir(CSRC) if f.endswith((".cu", ".cuh", ".h"))
                                          and f != "bind_status.h"))
def test_nvcc_code_takes_only_the_light_torch_headers(source):
    """What nvcc compiles includes torch through ``aten_light.h`` (the tensor, two factories, the guard, the stream, the
    device's properties), never ``<torch/extension.h>`` and the like: parsed by nvcc's device and host passes alike,
    they were most of every extension's first-use build (session 34, on a 2-core CPU: leafrow8_gemv.cu 172 s -> 100 s).
    Only the bindings (``*_bind.cpp`` through ``bind_status.h``, built by the C++ compiler) take the full header."""
    code = code_of(source)
    for heavy in HEAVY_TORCH_HEADERS:
        assert heavy not in code, f"{source} includes {heavy}: include \"aten_light.h\" (add what it lacks there)"
    if source.endswith(".cu"):
        assert '#include "aten_light.h"' in code


def test_bindings_are_named_after_their_source():
    assert bindings_of("/x/y/leafrow8_gemv.cu") == os.path.join(CSRC, "leafrow8_gemv_bind.cpp")


CPP = sorted(f for f in os.listdir(CSRC) if f.endswith((".cu", ".cpp", ".h", ".cuh")))


@pytest.mark.parametrize("source", CPP)
def test_no_message_is_formatted_through_an_ostream(source):
    """On the H200 machine (torch 2.11 + CUDA 13, libstdc++ 6.0.33) writing an integer to a std::ostringstream inside
    an extension killed the process (docs/bench/bind_diag_s18_h200.txt): messages are built by pvq::message from
    std::string and std::to_string (host_status.h), never by an ostream or torch's c10::str (which writes to one)."""
    code = code_of(source)
    for banned in ("ostringstream", "stringstream", "std::ostream", "c10::str", "<sstream>", "std::cout", "std::cerr"):
        assert banned not in code, f"{source} uses {banned}: build the message with pvq::message (host_status.h)"


@pytest.mark.skipif(not cuda_build_available(), reason="needs a CUDA device, nvcc and ninja")
@pytest.mark.parametrize("build", ["cuda_split._extension", "cuda_leaf._extension", "cuda_leaf._rows_extension",
                                   "cuda_hadamard._extension"])
def test_every_extension_builds_where_a_compiler_is(build):
    """Where nvcc and a GPU are, each CUDA source compiles: a failed build falls back to slower paths with only a
    warning, and the product tests pass through the fallback (session 19 found leaf8 and split8 had not compiled
    since session 18's message change, a dtype passed to pvq::message)."""
    import importlib

    module, name = build.split(".")
    assert getattr(importlib.import_module(f"pvq.kernels.{module}"), name)() is not None


def test_whether_kernels_can_be_built_is_asked_once_a_process(monkeypatch):
    """Every forward of a quantized layer asks :func:`cuda_build_available` (through its kernel family); looking for
    ninja on the file system each time made a 7B prefill host-bound (docs/kernels.md, session 26): one look a process."""
    import importlib.util

    import torch

    looked = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: looked.append(name) or find_spec(name, *a))
    cuda_build_available.cache_clear()
    try:
        answers = {cuda_build_available() for _ in range(5)}
    finally:
        cuda_build_available.cache_clear()  # the next caller looks again, with nothing patched
    assert len(answers) == 1 and looked == ["ninja"]
