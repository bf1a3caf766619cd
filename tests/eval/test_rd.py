import json

import pytest

from pvq.cli import main
from pvq.codecs import CodecError
from pvq.eval.rd import RDConfig, run_rd, shannon_mse


def test_rd_json_has_the_documented_keys_and_measured_rates(capsys):
    assert main(["rd", "--codec", "pvq,lloydmax", "--bits", "2", "--samples", "16384", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "gaussian"
    rows = {r["codec"]: r for r in out["results"]}
    assert set(rows) == {"pvq", "lloydmax"}
    for r in rows.values():
        assert {"codec", "dim", "bits_per_weight", "mse", "snr_db", "shannon_gap_db"} <= set(r)
        assert r["shannon_gap_db"] > 0  # no quantizer beats Shannon's bound
    assert rows["pvq"]["bits_per_weight"] <= 2.0 and rows["pvq"]["mse"] < rows["lloydmax"]["mse"]
    assert rows["lloydmax"]["bits_per_weight"] == pytest.approx(2.125)  # 2-bit codes + fp16 scale per 128


def test_rd_laplace_and_plot(tmp_path):
    res = run_rd(RDConfig(source="laplace", codecs=("uniform",), bits=(3.0,), samples=8192))
    x = res[0]
    assert x.mse > shannon_mse(x.bits_per_weight) and x.samples == 8192
    main(["rd", "--codec", "e8", "--bits", "2", "--samples", "4096", "--plot", str(tmp_path / "rd.png")])
    assert (tmp_path / "rd.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "config",
    [
        dict(source="uniform"),
        dict(codecs=("nope",)),
        dict(bits=(0.0,)),
        dict(samples=10),
        dict(dims=(0,)),
    ],
)
def test_rd_bad_config_fails_before_work(config):
    with pytest.raises(CodecError):
        RDConfig(**config)


def test_rd_unreachable_rate_is_an_error(capsys):
    with pytest.raises(CodecError, match="no codec reaches"):
        run_rd(RDConfig(codecs=("pvq",), bits=(0.05,), samples=4096))
    assert main(["rd", "--codec", "pvq", "--bits", "0.05", "--samples", "4096"]) == 2
    assert "raise the rate" in capsys.readouterr().err


def test_rd_reports_symbol_entropy_and_coded_rate(capsys):
    assert main(["rd", "--codec", "ecsq,uniform", "--bits", "3", "--samples", "65536", "--json",
                 "--option", "group_weights=128"]) == 0
    rows = {r["codec"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    for r in rows.values():
        assert r["entropy_bits_per_weight"] <= r["coded_bits_per_weight"] <= r["bits_per_weight"] + 1e-9
    # uniform's fixed 3-bit codes of a Gaussian have about 2.6 bits of entropy: coding gains
    assert rows["uniform"]["coded_bits_per_weight"] < rows["uniform"]["bits_per_weight"] - 0.3
    # ecsq's stream is coded already: only its fp16 scales (0.125 bits per weight here) gain a little
    assert rows["ecsq"]["bits_per_weight"] - 0.06 < rows["ecsq"]["coded_bits_per_weight"]


def test_rd_option_a_codec_lacks_is_an_error():
    with pytest.raises(CodecError, match="takes no option"):
        run_rd(RDConfig(codecs=("pvq",), bits=(2.0,), samples=8192, options=(("group_weights", 64),)))
