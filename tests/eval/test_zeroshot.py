"""Zero-shot accuracy through lm-evaluation-harness, offline, on the shipped ``pvq_heldout`` task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the "eval" extra: pip install -e ".[eval]"')

from pvq.cli import main  # noqa: E402
from pvq.eval import runs  # noqa: E402
from pvq.eval.zeroshot import TASKS_DIR, ZeroShotError, evaluate_zeroshot, prepare_tasks  # noqa: E402
from pvq.models.reference import CALIB_TEXT, HELDOUT_TEXT  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = TASKS_DIR / "pvq_heldout" / "pvq_heldout.jsonl"


def test_shipped_task_is_what_the_script_builds_from_heldout_text(tmp_path):
    out = tmp_path / "t.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_heldout_task.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == DATA.read_bytes()  # seeded: the shipped data is the script's output
    assert DATA.stat().st_size < 2_000_000
    heldout = HELDOUT_TEXT.read_text(encoding="utf-8")
    calib = CALIB_TEXT.read_text(encoding="utf-8")
    items = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(items) >= 2000 and len({d["file"] for d in items}) > 30
    for d in items[::25]:
        assert len(d["choices"]) == 4 == len(set(d["choices"])) and 0 <= d["label"] < 4
        assert d["context"] + d["choices"][d["label"]] in heldout  # the true next line, in its place
        assert d["context"] + d["choices"][d["label"]] not in calib


def test_shipped_task_loads_through_the_harness():
    names, manager, objects = prepare_tasks("pvq_heldout")
    assert names == ["pvq_heldout"] and "pvq_heldout" in manager.all_tasks
    (task,) = objects
    docs = list(task.test_docs())
    assert len(docs) == 2500
    assert task.doc_to_choice(docs[0]) == docs[0]["choices"] and task.doc_to_target(docs[0]) == docs[0]["label"]


@pytest.fixture(scope="module")
def reference():
    return runs.load_model(None)


def test_reference_model_scores_well_above_chance(reference):
    model, tokenizer = reference
    zs = evaluate_zeroshot(model, tokenizer, "pvq_heldout", limit=80)
    m = zs["tasks"]["pvq_heldout"]
    assert m["items"] == 80 and m["num_fewshot"] == 0
    # 4 choices: chance is 0.25; the full task gives acc 0.517, acc_norm 0.600 (see the task's README)
    assert m["acc_norm"] > 0.45 and m["acc"] > 0.40
    assert 0 < m["acc_stderr"] < 0.06 and 0 < m["acc_norm_stderr"] < 0.06


def test_pvq_3bit_checkpoint_is_scored_through_the_cli(tmp_path, capsys):
    ckpt = tmp_path / "q3"
    rc = main(["quantize", "--method", "pvq", "--bits", "3", "--samples", "4", "--seq-len", "64",
               "--output", str(ckpt), "--json"])
    assert rc == 0
    capsys.readouterr()
    rc = main(["eval", str(ckpt), "--tasks", "pvq_heldout", "--limit", "40", "--eval-tokens", "300",
               "--context", "128", "--json"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out)
    assert 2.5 < ev["bits_per_weight"] <= 3.0  # the scored model is the quantized one
    m = ev["zeroshot"]["tasks"]["pvq_heldout"]
    assert m["items"] == 40 and m["acc_norm"] > 0.35 and m["acc_norm_stderr"] > 0
    assert "perplexity" in ev and ev["zeroshot"]["harness"].startswith("lm-eval ")


def test_demo_has_an_accuracy_column_for_every_row(tmp_path, capsys):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pvq.models.reference import REFERENCE_DIR

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(tmp_path)
    rc = main(["demo", "--model", str(tmp_path), "--methods", "rtn", "--bits", "4", "--eval-tokens", "300",
               "--samples", "4", "--seq-len", "32", "--plot", "", "--zeroshot-limit", "12"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "acc_norm" in out and "pvq_heldout" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("none", "rtn"))]
    assert len(rows) == 2 and all(len(r) == len(rows[0]) for r in rows)  # every row has the column


def _no_model(*_, **__):
    raise AssertionError("a model was loaded before the task names were checked")


def test_unknown_task_fails_before_model_loading_with_close_names(monkeypatch, capsys):
    monkeypatch.setattr(runs, "load_model", _no_model)
    assert main(["eval", "--tasks", "pvq_heldot", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'pvq_heldot'" in err and "pvq_heldout" in err and len(err.strip().splitlines()) == 1
    assert main(["demo", "--zeroshot-task", "arc_esy", "--json"]) == 2
    assert "arc_easy" in capsys.readouterr().err


def test_unreachable_task_data_says_which_dataset_and_how_to_point_at_local_data(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(runs, "load_model", _no_model)
    with pytest.raises(ZeroShotError, match=r"allenai/ai2_arc.*--include-path"):
        runs.run_eval(None, tasks="arc_easy", limit=5)


def test_bad_options_fail_before_work(monkeypatch):
    monkeypatch.setattr(runs, "load_model", _no_model)
    with pytest.raises(ZeroShotError, match="--limit"):
        runs.run_eval(None, tasks="pvq_heldout", limit=0)
    with pytest.raises(ZeroShotError, match="--num-fewshot"):
        runs.run_eval(None, tasks="pvq_heldout", num_fewshot=-1)
    with pytest.raises(ZeroShotError, match="--include-path"):
        runs.run_eval(None, tasks="pvq_heldout", include_path=["/nonexistent/tasks"])
