"""scripts/build_corpus.py --write-split: one split's text, the same files the shipped model was built from."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import build_corpus  # noqa: E402

same_python = pytest.mark.skipif(".".join(map(str, sys.version_info[:3])) != build_corpus.SHIPPED_FROM,
                                 reason=f"the shipped splits come from CPython {build_corpus.SHIPPED_FROM}'s stdlib")


@same_python
def test_the_heldout_split_written_alone_is_the_shipped_text(tmp_path):
    out = tmp_path / "heldout.txt"
    assert build_corpus.main(["--write-split", "heldout", str(out)]) == 0
    assert out.read_text() == (ROOT / "pvq/assets/reference/heldout.txt").read_text()


def test_an_unknown_split_is_refused_by_name(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts/build_corpus.py"), "--write-split", "dev",
                        str(tmp_path / "x.txt")], capture_output=True, text=True)
    assert r.returncode != 0 and "takes one of heldout, val, train, calib" in r.stderr
    assert not (tmp_path / "x.txt").exists()
