"""`pvq rd --bits` ranges (start:stop:step) besides comma lists."""

import json

import pytest

from pvq.cli import main
from pvq.codecs import CodecError
from pvq.eval.rd import parse_rates


def test_parse_rates_lists_ranges_and_mixes() -> None:
    assert parse_rates("2,3,4") == [2.0, 3.0, 4.0]
    got = parse_rates("2:4:0.05")
    assert len(got) == 41 and got[0] == 2.0 and got[-1] == 4.0 and got[1] == 2.05
    assert parse_rates("1.5, 2:3:0.5") == [1.5, 2.0, 2.5, 3.0]
    assert parse_rates("2:2.3:0.2") == [2.0, 2.2]  # stop included only when hit


@pytest.mark.parametrize("text", ["", "2:1:0.1", "2:4:0", "2:4", "a:b:c", "two", "0:100:0.01"])
def test_parse_rates_rejects_bad_input(text: str) -> None:
    with pytest.raises(CodecError):
        parse_rates(text)


def test_rd_cli_accepts_a_range(capsys) -> None:
    assert main(["rd", "--codec", "lattice", "--bits", "2:3:0.5", "--samples", "4096", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["target_bits"] for r in rows] == [2.0, 2.5, 3.0]
    assert len({round(r["bits_per_weight"], 4) for r in rows}) == 3  # q = 4, 6, 8


def test_bad_rate_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["rd", "--bits", "2:x"])
    assert exc.value.code == 2
    assert "bad rate '2:x'" in capsys.readouterr().err
