"""Straight Triton launches (:mod:`pvq.kernels.triton_launch`): which launches skip the JIT, with which arguments,
and when they fall back to it (a stand-in kernel, CPU); on CUDA, the package's kernels launched straight against
their JIT launches, bit for bit."""

from types import SimpleNamespace

import pytest
import torch

from pvq.kernels.triton_launch import StraightLauncher, specialization


class Compiled:
    """A compiled kernel's stand-in: ``compiled[grid](*args)`` records a straight launch."""

    def __init__(self, log, refuse=False):
        self.log, self.refuse = log, refuse

    def __getitem__(self, grid):
        def runner(*args):
            if self.refuse:
                raise TypeError("function takes exactly 3 arguments")
            self.log.append(("straight", grid, args))
        return runner


class Kernel:
    """A JIT kernel's stand-in with parameters ``a, n, B, C`` (the last two constexpr)."""

    def __init__(self, compiled=True, refuse=False, params=True):
        self.log = []
        self.refuse = refuse
        self.compiled = compiled
        if params:
            self.params = [SimpleNamespace(name=n) for n in ("a", "n", "B", "C")]

    def __getitem__(self, grid):
        def jit(*args, num_warps, **constexprs):
            self.log.append(("jit", grid, args, constexprs, num_warps))
            return Compiled(self.log, self.refuse) if self.compiled else None
        return jit


def test_second_launch_of_a_specialization_goes_straight_with_constexprs_in_order():
    kernel, x = Kernel(), torch.zeros(64)
    launch = StraightLauncher(kernel)
    launch((4,), x, 32, C=7, B=3, num_warps=8)
    launch((5, 2), x, 48, C=7, B=3, num_warps=8)
    assert [e[0] for e in kernel.log] == ["jit", "straight"]
    assert kernel.log[0][1:] == ((4,), (x, 32), {"C": 7, "B": 3}, 8)
    assert kernel.log[1][1] == (5, 2, 1) and kernel.log[1][2] == (x, 48, 3, 7)  # B before C, as the kernel reads


@pytest.mark.parametrize("changed", [
    lambda x: (x, 33),  # an integer no longer divisible by 16
    lambda x: (x, 1),  # an integer equal to 1
    lambda x: (x, 2**31 + 16),  # a 64-bit integer
    lambda x: (x.double(), 32),  # another dtype
    lambda x: (x[1:], 32),  # an address that is no multiple of 16
])
def test_a_new_specialization_goes_through_the_jit(changed):
    kernel, x = Kernel(), torch.zeros(64)
    launch = StraightLauncher(kernel)
    launch((1,), x, 32, B=1, C=2)
    launch((1,), *changed(x), B=1, C=2)
    launch((1,), x, 32, B=1, C=3)  # another constexpr
    launch((1,), x, 32, B=1, C=2, num_warps=8)  # another option
    assert [e[0] for e in kernel.log] == ["jit"] * 4
    launch((1,), *changed(x), B=1, C=2)
    assert kernel.log[-1][0] == "straight"


def test_a_refused_launch_goes_through_the_jit_from_then_on():
    kernel, x = Kernel(refuse=True), torch.zeros(64)
    launch = StraightLauncher(kernel)
    for _ in range(3):
        launch((1,), x, 32, B=1, C=2)
    assert [e[0] for e in kernel.log] == ["jit"] * 3


@pytest.mark.parametrize("kernel, constexprs", [
    (Kernel(params=False), {"B": 1, "C": 2}),  # Triton's interpreter: no parameter list
    (Kernel(compiled=False), {"B": 1, "C": 2}),  # no compiled kernel returned
    (Kernel(), {"B": 1}),  # a parameter left to its default: its place is unknown
])
def test_without_a_compiled_kernel_to_call_every_launch_goes_through_the_jit(kernel, constexprs):
    launch = StraightLauncher(kernel)
    for _ in range(3):
        launch((1,), torch.zeros(64), 32, **constexprs)
    assert [e[0] for e in kernel.log] == ["jit"] * 3


def test_a_launcher_made_not_straight_always_goes_through_the_jit():
    kernel = Kernel()
    launch = StraightLauncher(kernel, straight=False)
    for _ in range(3):
        launch((1,), torch.zeros(64), 32, B=1, C=2)
    assert [e[0] for e in kernel.log] == ["jit"] * 3


def test_specialization_reads_what_tritons_key_reads():
    x = torch.zeros(64, dtype=torch.float16)
    assert specialization((x, x[8:], x[1:], 1, 16, 17, -2**31, 2**31, True, None, 0.5)) == (
        (torch.float16, True), (torch.float16, True), (torch.float16, False), (True, False, True), (False, True, True),
        (False, False, True), (False, True, True), (False, True, False), True, None, float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="straight launches of compiled kernels need CUDA")
def test_package_kernels_launched_straight_equal_their_jit_launches():
    from pvq.kernels import triton_hadamard, triton_rows
    from pvq.kernels.leaf_rows import leaf_rows_from_split
    from pvq.transforms import RandomizedHadamard
    from test_leaf_layout import code_runtime

    for points in (False, True):  # 3 bits in leaf pairs, 2 in whole points; 70 rows: the last row group part empty
        rt = leaf_rows_from_split(code_runtime(3.0 - points, 16, 70, 256, seed=5, device="cuda"), whole_points=points)
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            first = triton_rows.leaf_rows_decode_triton(rt, dtype)
            assert torch.equal(first, triton_rows.leaf_rows_decode_triton(rt, dtype))
    assert any(triton_rows._ROWS_DECODE._compiled.values()), "no decode was launched straight"
    rh = RandomizedHadamard(512, seed=3)
    gate, up = (torch.randn(37, 1024, device="cuda", dtype=torch.float16) for _ in range(2))
    first = triton_hadamard.gated_hadamard_rotate(rh, gate, up)
    assert torch.equal(first, triton_hadamard.gated_hadamard_rotate(rh, gate, up))
    assert any(triton_hadamard._GATED._compiled.values()), "no gated rotation was launched straight"
