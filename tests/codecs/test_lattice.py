"""Lattice nearest points (vs. enumeration) and the e8 codec (codebook, encoder, packing, MSE)."""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from pvq.codecs import CODECS, CodecError, make_codec, quantize_grouped
from pvq.codecs.lattice import (
    E8Codec,
    an_nearest,
    an_star_glue,
    an_star_nearest,
    closest_point_enumeration,
    dn_nearest,
    e8_codebook8,
    e8_codebook16,
    e8_nearest,
    hyperplane_basis,
    is_lattice_point,
    lattice_generator,
    zn_nearest,
)

NEAREST = {"Z": zn_nearest, "D": dn_nearest, "E8": e8_nearest, "A": an_nearest, "A*": an_star_nearest}


def _columns(name: str, n: int) -> int:
    return n + 1 if name in ("A", "A*") else n


def _check_against_enumeration(name: str, n: int, x: torch.Tensor) -> None:
    y = NEAREST[name](x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert is_lattice_point(name, y).all(), f"{name}{n}: not a lattice point"
    d = ((x - y) ** 2).sum(dim=1)
    gen = lattice_generator(name, n).numpy()
    for i in range(x.shape[0]):
        best, point = closest_point_enumeration(x[i].numpy(), gen, math.sqrt(float(d[i])) + 1e-6)
        # the ball around x of the algorithm's distance holds its own point, so nothing is missing
        assert math.isfinite(best)
        assert float(d[i]) <= best + 1e-9 * (1 + best), f"{name}{n}: found {float(d[i])}, nearest is {best}"


CASES = [("Z", 5), ("D", 3), ("D", 4), ("D", 7), ("E8", 8), ("A", 2), ("A", 3), ("A", 7), ("A", 16),
         ("A*", 2), ("A*", 3), ("A*", 6), ("A*", 9)]  # fmt: skip


@pytest.mark.parametrize("name,n", CASES)
@pytest.mark.parametrize("scale", [0.3, 1.0, 10.0, 1000.0])
def test_nearest_point_matches_enumeration(name: str, n: int, scale: float) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}:{n}:{scale}".encode()))  # same in every process
    x = torch.randn(40, _columns(name, n), generator=g, dtype=torch.float64) * scale
    _check_against_enumeration(name, n, x)


def test_an_star_16_matches_enumeration() -> None:
    g = torch.Generator().manual_seed(16)
    x = torch.randn(8, 17, generator=g, dtype=torch.float64)
    _check_against_enumeration("A*", 16, x)
    _check_against_enumeration("A*", 16, x * 0.3)


@pytest.mark.parametrize("name,n", [("D", 5), ("E8", 8), ("A", 4), ("A*", 4)])
def test_nearest_point_at_ties_and_on_points(name: str, n: int) -> None:
    gen = lattice_generator(name, n)
    g = torch.Generator().manual_seed(7)
    coeffs = torch.randint(-3, 4, (30, n), generator=g).double()
    points = coeffs @ gen
    assert torch.allclose(NEAREST[name](points), points, rtol=0, atol=1e-12)
    # midpoints between lattice points are ties: any nearest point will do
    partners = torch.randint(-1, 2, (30, n), generator=g).double() @ gen
    _check_against_enumeration(name, n, points + 0.5 * partners)


def test_enumeration_reference_matches_full_box() -> None:
    """The Fincke-Pohst reference itself against a plain box of coefficients around x."""
    g = torch.Generator().manual_seed(3)
    for name, n, box in [("D", 3, 4), ("A*", 2, 4), ("A", 3, 3), ("A*", 4, 3)]:
        gen = lattice_generator(name, n)
        offsets = torch.tensor(list(itertools.product(range(-box, box + 1), repeat=n)), dtype=torch.float64)
        for _ in range(6):
            x = torch.randn(gen.shape[1], generator=g, dtype=torch.float64) * 5.0
            centre = torch.round(torch.linalg.lstsq(gen.T, x.unsqueeze(1)).solution.squeeze(1))
            pts = (centre + offsets) @ gen
            full = ((pts - x) ** 2).sum(dim=1).min().item()
            best, point = closest_point_enumeration(x.numpy(), gen.numpy(), math.sqrt(full) + 1.0)
            assert best == pytest.approx(full, abs=1e-9), name
            assert is_lattice_point(name, torch.from_numpy(point).unsqueeze(0)).all()


@pytest.mark.parametrize("name,n,det", [("Z", 4, 1.0), ("D", 6, 4.0), ("E8", 8, 1.0), ("A", 5, 6.0), ("A*", 5, 1 / 6)])
def test_generators(name: str, n: int, det: float) -> None:
    gen = lattice_generator(name, n)
    assert is_lattice_point(name, gen).all()
    assert torch.linalg.det(gen @ gen.T).item() == pytest.approx(det, rel=1e-12)


def test_an_star_glue_and_membership() -> None:
    for n in (2, 5, 16):
        glue = an_star_glue(n)
        assert glue.sum(dim=1).abs().max() < 1e-12
        assert is_lattice_point("A*", glue).all()
        assert not is_lattice_point("A", glue[1:]).any()
        assert not is_lattice_point("A*", glue[1:2] * 0.5).any()


def test_hyperplane_coordinates_round_trip() -> None:
    n = 6
    b = hyperplane_basis(n)
    assert torch.allclose(b @ b.T, torch.eye(n, dtype=torch.float64), atol=1e-13)
    assert b.sum(dim=1).abs().max() < 1e-13
    g = torch.Generator().manual_seed(5)
    v = torch.randn(50, n, generator=g, dtype=torch.float64)  # points of R^n
    y = an_star_nearest(v @ b) @ b.T  # nearest A_6* point, in R^n
    d = ((v - y) ** 2).sum(dim=1)
    gen_rn = lattice_generator("A*", n) @ b.T  # A_6* generator in R^n
    for i in range(10):
        best, _ = closest_point_enumeration(v[i].numpy(), gen_rn.numpy(), math.sqrt(float(d[i])) + 1e-6)
        assert float(d[i]) <= best + 1e-9


def test_nearest_point_bad_input() -> None:
    with pytest.raises(CodecError):
        e8_nearest(torch.zeros(3, 7))
    with pytest.raises(CodecError):
        an_star_nearest(torch.zeros(3, 18))  # n = 17 not supported
    with pytest.raises(CodecError):
        dn_nearest(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(CodecError):
        lattice_generator("E7")


def test_float32_inputs_stay_float32() -> None:
    x = torch.randn(20, 8)
    assert e8_nearest(x).dtype == torch.float32
    assert is_lattice_point("E8", e8_nearest(x)).all()
    assert is_lattice_point("A*", an_star_nearest(torch.randn(20, 9)), tol=1e-5).all()


# ---------------------------------------------------------------- codebooks


def test_codebook16_has_2_16_distinct_points_of_shifted_e8() -> None:
    cb = e8_codebook16()
    cw = cb.codewords()
    assert cw.shape == (1 << 16, 8)
    assert torch.unique(cw, dim=0).shape[0] == 1 << 16
    assert is_lattice_point("E8", cw - 0.25).all()
    assert cb.patterns.shape == (256, 8)
    norms = (cb.patterns**2).sum(dim=1)
    assert int((norms <= 10 + 1e-9).sum()) == 227 and int((norms - 12).abs().lt(1e-9).sum()) == 29
    # encode inverts decode on every codeword
    assert torch.equal(cb.encode(cw), torch.arange(1 << 16))


@pytest.mark.parametrize("scale", [0.3, 1.0, 1.04, 3.0])
def test_codebook16_encode_is_nearest_codeword(scale: float) -> None:
    cb = e8_codebook16()
    g = torch.Generator().manual_seed(int(scale * 100))
    y = torch.randn(300, 8, generator=g, dtype=torch.float64) * scale
    fast, ref = cb.encode(y), cb.encode_reference(y)
    d_fast = ((y - cb.decode(fast, torch.float64)) ** 2).sum(dim=1)
    d_ref = ((y - cb.decode(ref, torch.float64)) ** 2).sum(dim=1)
    assert torch.allclose(d_fast, d_ref, rtol=0, atol=1e-12)
    y32 = y.float()
    d32 = ((y32 - cb.decode(cb.encode(y32))) ** 2).sum(dim=1)
    assert torch.allclose(d32.double(), d_ref, rtol=1e-5, atol=1e-5)


def test_codebook8_points_and_encode() -> None:
    cb = e8_codebook8()
    assert cb.points.shape == (256, 8) and torch.unique(cb.points, dim=0).shape[0] == 256
    assert is_lattice_point("E8", cb.points).all()
    # closed under negation and under swapping two coordinates
    assert torch.equal(torch.unique(-cb.points, dim=0), torch.unique(cb.points, dim=0))
    assert torch.equal(torch.unique(cb.points[:, [1, 0, 2, 3, 4, 5, 6, 7]], dim=0), torch.unique(cb.points, dim=0))
    g = torch.Generator().manual_seed(8)
    y = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert torch.equal(cb.encode(y), cb.encode_reference(y))


# ---------------------------------------------------------------- codec


def _gauss(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def test_e8_codec_2bit_mse_and_rate() -> None:
    codec = make_codec("e8", 2.0)
    assert codec.code_bits == 2 and codec.group_size == 32
    x = _gauss(1 << 17, 0)  # 131072 vectors, 2^20 numbers
    res = quantize_grouped(codec, x)
    mse = ((res.xhat - x) ** 2).mean().item()
    assert mse <= 0.095, mse
    assert res.stored.bits_per_weight() == pytest.approx(2.0625, abs=1e-12)
    assert codec.nominal_bits_per_weight() == pytest.approx(2.0625)


@pytest.mark.parametrize("bits,ceiling", [(3, 0.031), (4, 0.0090)])
def test_e8_codec_residual_stages_mse_and_rate(bits: int, ceiling: float) -> None:
    codec = make_codec("e8", bits + 0.0625)
    assert codec.code_bits == bits
    x = _gauss(1 << 14, 1)
    res = quantize_grouped(codec, x)
    mse = ((res.xhat - x) ** 2).mean().item()
    assert mse <= ceiling, mse
    assert res.stored.bits_per_weight() == pytest.approx(bits + 0.0625, abs=1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_e8_codec_pack_unpack_exact(bits: int) -> None:
    codec = E8Codec(bits, group_size=4)
    x = _gauss(4 * 13, 2) * 3.0  # awkward count
    res = quantize_grouped(codec, x)
    n = x.shape[0]
    packed = {k: v for k, v in res.stored.tensors.items() if k != "scale"}
    assert all(v.dtype == torch.uint8 for v in packed.values())
    codes = codec.unpack(packed, n)
    assert codes.keys() == res.codes.keys()
    for k in codes:
        assert torch.equal(codes[k], res.codes[k])
    scale = res.stored.tensors["scale"].float().repeat_interleave(4)
    assert torch.equal(codec.decode(codes, scale), res.xhat)
    # random codes survive packing too
    g = torch.Generator().manual_seed(bits)
    rnd = {f"stage{k}": torch.randint(0, 1 << b.bits, (37,), generator=g) for k, b in enumerate(codec.books)}
    back = codec.unpack(codec.pack(rnd), 37)
    assert all(torch.equal(back[k], rnd[k]) for k in rnd)


def test_e8_codec_reconstructs_scaled_codewords_exactly() -> None:
    codec = E8Codec(2)
    g = torch.Generator().manual_seed(9)
    codes = {"stage0": torch.randint(0, 1 << 16, (64,), generator=g)}
    scale = torch.full((64,), 0.375)
    x = codec.decode(codes, scale)
    assert torch.equal(codec.encode(x, scale)["stage0"], codes["stage0"])


def test_e8_codec_zero_group_and_bad_input() -> None:
    codec = E8Codec(3, group_size=2)
    x = torch.zeros(4, 8)
    x[2:] = _gauss(2, 3)
    res = quantize_grouped(codec, x)
    assert torch.isfinite(res.xhat).all() and torch.equal(res.xhat[:2], torch.zeros(2, 8))
    with pytest.raises(CodecError):
        codec.encode(torch.full((2, 8), float("nan")), torch.ones(2))
    with pytest.raises(CodecError):
        codec.encode(torch.zeros(2, 8), torch.ones(3))
    with pytest.raises(CodecError):
        codec.decode({"stage0": torch.zeros(2, dtype=torch.int64)}, torch.ones(2))


def test_e8_from_rate_choices_and_errors() -> None:
    assert "e8" in CODECS and CODECS["e8"].dims == (8,)
    assert make_codec("e8", 3).code_bits == 3
    assert make_codec("e8", 4.0625).code_bits == 4
    assert make_codec("e8", 2, group_size=8).nominal_bits_per_weight() == pytest.approx(2.25)
    for bad in (1.0, 2.5, 5.0):
        with pytest.raises(CodecError):
            make_codec("e8", bad)
    with pytest.raises(CodecError):
        make_codec("e8", 2, dim=16)
    with pytest.raises(CodecError):
        make_codec("e8", 2, sigma=1.0)
    with pytest.raises(CodecError):
        E8Codec(5)
    with pytest.raises(CodecError):
        E8Codec(2, group_size=0)
    with pytest.raises(CodecError):
        E8Codec(2, scale_factor=-1.0)
