"""Calibration text loading and seeded random windows."""

import sys
import types

import pytest
import torch

from pvq.models import CalibrationError, calibration_batches, load_text, tokenize_text


class Bytes:
    """Byte-level test tokenizer (ids 0..255)."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode())


def test_file_and_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("print(1)\n")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b" / "c.md").write_text("# c")
    (tmp_path / "b" / "skip.json").write_text("{}")
    (tmp_path / "b10.txt").write_text("ten")
    assert load_text(tmp_path / "a.txt") == "alpha"
    # recursive, sorted by relative path, only *.txt/*.py/*.md, joined by blank lines
    assert load_text(tmp_path) == "alpha\n\n# c\n\nprint(1)\n\n\nten"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no"):
        load_text(tmp_path / "empty")


def test_missing_path_without_datasets_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(CalibrationError, match="not an existing file or directory.*install the `datasets`"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(CalibrationError, match="neither an existing file"):
        load_text("a:b:c:d")


def test_datasets_name_and_hub_failure(monkeypatch):
    calls = []

    class FakeDataset:
        column_names = ["id", "text"]
        features = {}

        def __getitem__(self, col):
            return ["first line", "", "second line"]

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "offline":
            raise ConnectionError("no network")
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_text("wikitext:wikitext-2-raw-v1:test") == "first line\n\nsecond line"
    assert load_text("wikitext:wikitext-2-raw-v1") and load_text("plain")
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test"), ("wikitext", "wikitext-2-raw-v1", "train"),
                     ("plain", None, "train")]
    with pytest.raises(CalibrationError, match="could not load dataset 'offline'.*ConnectionError.*local text file"):
        load_text("offline")


def test_windows_are_seeded_slices_of_the_token_stream():
    text = "".join(chr(97 + (i * 7) % 26) for i in range(500))
    ids = tokenize_text(text, Bytes())
    assert ids.dtype == torch.int64 and ids.numel() == 500
    batch = calibration_batches(text, Bytes(), n_samples=6, seq_len=40, seed=3)
    assert batch.shape == (6, 40) and batch.dtype == torch.int64
    stream = ids.tolist()
    for row in batch.tolist():
        assert any(stream[s : s + 40] == row for s in range(500 - 40 + 1))
    assert torch.equal(batch, calibration_batches(text, Bytes(), 6, 40, seed=3))
    assert not torch.equal(batch, calibration_batches(text, Bytes(), 6, 40, seed=4))
    assert torch.equal(batch, calibration_batches(ids, None, 6, 40, seed=3))  # ids in, same windows
    full = calibration_batches(text, Bytes(), 2, 500, seed=0)  # exactly as long as the text
    assert torch.equal(full[0], ids)


def test_bad_calibration_input():
    with pytest.raises(CalibrationError, match="empty"):
        calibration_batches("", Bytes(), 4, 8)
    with pytest.raises(CalibrationError, match="empty"):
        calibration_batches(" \n\t ", Bytes(), 4, 8)
    with pytest.raises(CalibrationError, match="has 5 tokens, fewer than seq_len=8.*at most 5"):
        calibration_batches("hello", Bytes(), 4, 8)
    with pytest.raises(CalibrationError, match="n_samples"):
        calibration_batches("hello", Bytes(), 0, 2)
    with pytest.raises(CalibrationError, match="seq_len"):
        calibration_batches("hello", Bytes(), 1, 0)
    with pytest.raises(CalibrationError, match="no tokens"):
        calibration_batches(torch.zeros(0, dtype=torch.long), None, 1, 2)


def test_transformers_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<unk>")
    assert tokenize_text("a b b c", hf).tolist() == [1, 2, 2, 0]  # no special tokens added
