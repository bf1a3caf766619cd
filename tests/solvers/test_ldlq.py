import pytest
import torch

from pvq.codecs.base import VectorCodec, fp16_exact, quantize_grouped
from pvq.codecs.packing import pack_bits, unpack_bits
from pvq.solvers.hessian import SolverError, damp
from pvq.solvers.ldlq import proxy_loss, quantize_layer, quantize_layer_reference


class RTN(VectorCodec):
    """Test codec: symmetric uniform scalar, levels -L..L with L = 2^(bits-1) - 1, step = absmax / L."""

    name = "test-rtn"

    def __init__(self, dim: int, group_size: int, bits: int = 3):
        self.dim, self.group_size, self.bits = dim, group_size, bits
        self.levels = 2 ** (bits - 1) - 1

    def group_scales(self, x):
        return fp16_exact(x.abs().amax(dim=(1, 2)))

    def _unit(self, scale):
        s = scale[:, None]
        return torch.where(s > 0, self.levels / s, torch.zeros_like(s))

    def encode(self, x, scale):
        q = torch.round(x * self._unit(scale)).clamp(-self.levels, self.levels)
        return {"q": (q + self.levels).to(torch.int64)}

    def decode(self, codes, scale):
        return (codes["q"].float() - self.levels) * (scale[:, None] / self.levels)

    def pack(self, codes):
        return {"q": pack_bits(codes["q"], self.bits)}

    def unpack(self, stored, n):
        return {"q": unpack_bits(stored["q"], self.bits, n * self.dim).reshape(n, self.dim)}

    def nominal_bits_per_weight(self):
        return self.bits + 16 / (self.dim * self.group_size)


class Identity(VectorCodec):
    """Test codec that stores vectors exactly (no scale)."""

    name = "test-identity"
    stores_scale = False

    def __init__(self, dim: int, group_size: int = 1):
        self.dim, self.group_size = dim, group_size

    def group_scales(self, x):
        return torch.ones(x.shape[0])

    def encode(self, x, scale):
        return {"x": x.clone()}

    def decode(self, codes, scale):
        return codes["x"].clone()

    def pack(self, codes):
        return {"x": codes["x"].view(torch.uint8)}

    def unpack(self, stored, n):
        return {"x": stored["x"].view(torch.float32).reshape(n, self.dim)}

    def nominal_bits_per_weight(self):
        return 32.0


class GainRTN(RTN):
    """RTN shape times a per-vector float gain chosen to minimize e^T M e (M = identity in encode)."""

    def __init__(self, *a, metric: str = "hessian", **k):
        super().__init__(*a, **k)
        self.metric = metric
        self.seen: list[torch.Tensor] = []

    def _with_gain(self, x, scale, m):
        q = super().encode(x, scale)
        v = super().decode(q, scale)
        num = ((v @ m) * x).sum(1)
        den = ((v @ m) * v).sum(1)
        gain = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
        return {"q": q["q"], "gain": gain}

    def encode(self, x, scale):
        return self._with_gain(x, scale, torch.eye(self.dim))

    def encode_hessian(self, x, scale, h_blk):
        self.seen.append(h_blk.clone())
        m = h_blk if self.metric == "hessian" else torch.eye(self.dim)
        return self._with_gain(x, scale, m)

    def decode(self, codes, scale):
        return super().decode({"q": codes["q"]}, scale) * codes["gain"][:, None]


def correlated_problem(out_f, in_f, seed=0, rho=0.9, tokens=None):
    """Random W and the Hessian of AR(1)-correlated inputs (seeded)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    idx = torch.arange(in_f, dtype=torch.float64)
    cov = rho ** (idx[:, None] - idx[None, :]).abs()
    chol = torch.linalg.cholesky(cov)
    tokens = tokens or 4 * in_f
    x = torch.randn(tokens, in_f, generator=g, dtype=torch.float64) @ chol.T
    x = x * torch.linspace(0.2, 3.0, in_f, dtype=torch.float64)  # uneven input energy
    return w, x.T @ x / tokens


def obs_reference(w, h, codec, damp_rel=0.01):
    """Textbook block OBS (no Cholesky): quantize D columns, update the rest with the
    explicit inverse Hessian of the remaining columns, then eliminate the block."""
    d, g = codec.dim, codec.group_size
    w = w.double().clone()
    hinv = torch.linalg.inv(damp(h, damp_rel))
    out_f, in_f = w.shape
    q = torch.zeros_like(w)
    scales = torch.zeros(out_f, in_f // (d * g))
    for c0 in range(0, in_f, d):
        if c0 % (d * g) == 0:
            grp = w[:, c0 : c0 + d * g].float().reshape(out_f, g, d)
            scales[:, c0 // (d * g)] = codec.group_scales(grp)
        s = scales[:, c0 // (d * g)]
        blk = w[:, c0 : c0 + d].float()
        q[:, c0 : c0 + d] = codec.decode(codec.encode(blk, s), s).double()
        r = slice(c0 + d, in_f)
        f = hinv  # inverse Hessian of the columns c0.. (block first)
        fbb = f[:d, :d]
        err = (w[:, c0 : c0 + d] - q[:, c0 : c0 + d]) @ torch.linalg.inv(fbb)
        w[:, r] -= err @ f[:d, d:]
        hinv = f[d:, d:] - f[d:, :d] @ torch.linalg.inv(fbb) @ f[:d, d:]
    return q.float()


# ------------------------------------------------------------------ correctness


@pytest.mark.parametrize("dim,group", [(1, 8), (4, 3), (8, 2)])
def test_matches_textbook_obs(dim, group):
    w, h = correlated_problem(13, 48, seed=dim)
    codec = RTN(dim, group, bits=3)
    want = obs_reference(w, h, codec)
    got = quantize_layer(w, h, codec, work_dtype=torch.float64)
    torch.testing.assert_close(got.weight, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block_dim,lazy", [(4, 50), (12, 24), (48, 1), (4, 1000)])
def test_lazy_matches_reference(block_dim, lazy):
    w, h = correlated_problem(37, 96, seed=block_dim)
    codec = RTN(4, 6, bits=2)  # groups of 24 columns
    ref = quantize_layer_reference(w, h, codec, block_dim=block_dim, work_dtype=torch.float64)
    got = quantize_layer(w, h, codec, block_dim=block_dim, lazy_columns=lazy, work_dtype=torch.float64)
    assert len(got.codes) == len(ref.codes) == 96 // block_dim
    for a, b in zip(got.codes, ref.codes):
        assert torch.equal(a["q"], b["q"])
    assert torch.equal(got.weight, ref.weight) and torch.equal(got.scales, ref.scales)
    # float32 updates: same result up to rare rounding flips
    f32 = quantize_layer(w, h, codec, block_dim=block_dim, lazy_columns=lazy)
    close = (f32.weight - ref.weight).abs() <= 1e-4
    assert close.float().mean() > 0.99
    assert abs(f32.proxy_loss - ref.proxy_loss) <= 0.02 * ref.proxy_loss


def test_error_feedback_lowers_proxy_loss():
    w, h = correlated_problem(64, 256, seed=3)
    for bits in (2, 3):
        codec = RTN(8, 4, bits=bits)
        ef = quantize_layer(w, h, codec)
        rtn = quantize_layer(w, h, codec, error_feedback=False)
        assert ef.proxy_loss < 0.8 * rtn.proxy_loss, (bits, ef.proxy_loss, rtn.proxy_loss)
        assert ef.relative_error == pytest.approx(ef.proxy_loss / proxy_loss(w, 0 * w, h))
        assert ef.proxy_loss == pytest.approx(proxy_loss(w, ef.weight, h))


def test_no_feedback_equals_grouped_flow():
    w, h = correlated_problem(9, 64, seed=4)
    codec = RTN(8, 2, bits=3)
    res = quantize_layer(w, h, codec, error_feedback=False)
    flat = quantize_grouped(codec, w.reshape(-1, 8))
    assert torch.equal(res.weight, flat.xhat.reshape(9, 64))
    assert torch.equal(res.merged_codes()["q"], flat.codes["q"])
    stored = res.stored()
    assert stored.tensors.keys() == flat.stored.tensors.keys()
    for k in stored.tensors:
        assert torch.equal(stored.tensors[k], flat.stored.tensors[k])
    assert stored.bits_per_weight() == pytest.approx(3 + 16 / 16)


def test_merged_codes_and_scales_decode_to_weight():
    w, h = correlated_problem(11, 96, seed=5)
    codec = RTN(4, 6, bits=3)
    res = quantize_layer(w, h, codec, block_dim=8)
    assert res.scales.shape == (11, 4)
    assert torch.equal(res.scales, fp16_exact(res.scales))
    codes = codec.unpack(codec.pack(res.merged_codes()), 11 * 24)
    xhat = codec.decode(codes, res.per_vector_scales())
    assert torch.equal(xhat.reshape(11, 96), res.weight)


def test_identity_codec_is_exact():
    w, h = correlated_problem(7, 40, seed=6)
    for ef in (True, False):
        res = quantize_layer(w, h, Identity(4, 5), error_feedback=ef)
        assert torch.equal(res.weight, w) and res.proxy_loss == 0.0 and res.relative_error == 0.0


def test_dead_inputs_zeroed_with_feedback():
    w, h = correlated_problem(5, 16, seed=7)
    h[3, :] = 0
    h[:, 3] = 0
    res = quantize_layer(w, h, Identity(4))
    assert torch.all(res.weight[:, 3] == 0)
    torch.testing.assert_close(res.weight[:, :3], w[:, :3], rtol=0, atol=1e-6)
    assert torch.equal(quantize_layer(w, h, Identity(4), error_feedback=False).weight, w)


# ------------------------------------------------------------------ Hessian hook


def test_hook_gets_schur_complement_blocks():
    w, h = correlated_problem(6, 24, seed=8)
    codec = GainRTN(4, 2)
    quantize_layer(w, h, codec, block_dim=8)
    hd = damp(h)
    assert len(codec.seen) == 6
    for i, got in enumerate(codec.seen):
        b = (i // 2) * 8  # block start
        rest = slice(b + 8, 24)
        s = hd[b : b + 8, b : b + 8] - hd[b : b + 8, rest] @ torch.linalg.solve(hd[rest, rest], hd[rest, b : b + 8])
        j = (i % 2) * 4
        torch.testing.assert_close(got, s[j : j + 4, j : j + 4].float(), rtol=1e-4, atol=1e-5)
    codec.seen.clear()
    quantize_layer(w, h, codec, error_feedback=False)
    for i, got in enumerate(codec.seen):
        torch.testing.assert_close(got, hd[4 * i : 4 * i + 4, 4 * i : 4 * i + 4].float())


def test_hessian_aware_gains_help():
    w, h = correlated_problem(64, 128, seed=9, rho=0.95)
    for ef in (True, False):
        aware = quantize_layer(w, h, GainRTN(8, 4, bits=2), error_feedback=ef)
        plain = quantize_layer(w, h, GainRTN(8, 4, bits=2, metric="euclid"), error_feedback=ef)
        assert aware.proxy_loss < 0.97 * plain.proxy_loss, (ef, aware.proxy_loss, plain.proxy_loss)


# ------------------------------------------------------------------ errors and progress


def test_bad_input_raises_clear_errors():
    w, h = correlated_problem(4, 96, seed=10)
    codec = RTN(8, 8)
    with pytest.raises(SolverError, match=r"group sizes that divide it at D=8: \[1, 2, 3, 4, 6, 12\]"):
        quantize_layer(w, h, codec)
    with pytest.raises(SolverError, match="not a multiple of the codec's vector dim"):
        quantize_layer(w[:, :90], h[:90, :90], codec)
    with pytest.raises(SolverError, match=r"Hessian must be \[96, 96\]"):
        quantize_layer(w, h[:64, :64], RTN(8, 4))
    with pytest.raises(SolverError, match=r"\[out, in\]"):
        quantize_layer(w[0], h, RTN(8, 4))
    with pytest.raises(SolverError, match="block_dim"):
        quantize_layer(w, h, RTN(8, 4), block_dim=12)
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SolverError, match="NaN"):
        quantize_layer(bad, h, RTN(8, 4))
    indefinite = h - 2 * torch.linalg.eigvalsh(h).max() * torch.eye(96, dtype=h.dtype) * 0.5
    indefinite.diagonal().clamp_(min=1e-3)
    with pytest.raises(SolverError, match="raise the damping"):
        quantize_layer(w, indefinite, RTN(8, 4))


def test_progress_reports_columns():
    w, h = correlated_problem(3, 64, seed=11)
    calls = []
    quantize_layer(w, h, RTN(8, 2), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(c, 64) for c in range(8, 65, 8)]
