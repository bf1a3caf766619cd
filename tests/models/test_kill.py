"""A real ``pvq quantize`` process killed with SIGKILL at several points leaves, at the output path,
nothing, the complete old checkpoint or the complete new one - never something that loads wrongly;
the next run on the path cleans or repairs what was left (and says so)."""

import os
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pvq.models import load_quantized
from pvq.models.checkpoint import clean_leftovers
from pvq.models.reference import CALIB_TEXT, REFERENCE_DIR
from processes import kill_at_pause

X = torch.randint(0, 8192, (1, 32), generator=torch.Generator().manual_seed(3))

# Runs pvq's CLI with a pause (then SIGKILL from the test) at one point of the work.
RUNNER = textwrap.dedent('''
    import os, sys, time
    import pvq.cli, pvq.models.checkpoint as ck, pvq.models.driver as dr
    point, args = sys.argv[1], sys.argv[2:]

    def pause(tag):
        print("PAUSE", tag, flush=True)
        time.sleep(600)

    if point == "quantize":  # after the first layer is quantized
        solve = dr.quantize_linear
        def quantize_linear(*a, **k):
            r = solve(*a, **k)
            pause(point)
            return r
        dr.quantize_linear = quantize_linear
    elif point == "write":  # tensors written into the temporary directory, record not yet
        ck._write_integrity = lambda tmp, qdict: pause(point)
    elif point == "rename":  # no atomic exchange: between the two renames of the fallback
        ck._exchange = lambda a, b: False
        rename = os.replace
        def replace(a, b):
            rename(a, b)
            if ".old-" in str(b):
                pause(point)
        os.replace = replace
    sys.exit(pvq.cli.main(args))
''')


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    return path


def quantize_args(model_dir, out, bits, *extra):
    return ["quantize", str(model_dir), "--bits", str(bits), "--dim", "8", "--samples", "2", "--seq-len", "16",
            "--calib", str(CALIB_TEXT), "--output", str(out), "--json", *extra]


def run_and_kill(tmp_path, point, args):
    kill_at_pause(tmp_path, RUNNER, [point, *args], repr(point))


def logits(path):
    with torch.no_grad():
        return load_quantized(path)(input_ids=X).logits


def leftovers(out):
    """Temporary and displaced directories beside ``out`` (the work directory of a resumable run,
    ``.<name>.work-<digest>``, is kept on purpose until the checkpoint is in place: test_resume.py)."""
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith(f".{out.name}.") and not p.name.startswith(f".{out.name}.work-"))


@pytest.fixture(scope="module")
def old_checkpoint(model_dir, tmp_path_factory):
    from pvq.cli import main

    out = tmp_path_factory.mktemp("old") / "ck"
    assert main(quantize_args(model_dir, out, 4)) == 0
    return out, logits(out)


@pytest.mark.parametrize("point, existing", [("quantize", False), ("write", False),  # nothing at the path yet
                                             ("quantize", True), ("write", True), ("rename", True)])
def test_killed_run_leaves_nothing_or_a_complete_checkpoint(model_dir, old_checkpoint, tmp_path, point, existing):
    import shutil

    from pvq.cli import main

    out = tmp_path / "ck"
    if existing:  # (with nothing at the path there is one rename, no window between two)
        shutil.copytree(old_checkpoint[0], out)
    run_and_kill(tmp_path, point, quantize_args(model_dir, out, 3, "--overwrite"))
    if not existing:
        assert not out.exists()
    elif point == "rename":
        assert not out.exists()  # the old checkpoint is intact beside it (.old), the new one in .tmp
        assert [n.split("-")[0] for n in leftovers(out)] == [".ck.old", ".ck.tmp"]
        said = clean_leftovers(out, log=lambda line: None)  # what the next run does first
        assert any(line.startswith("restored the previous checkpoint") for line in said)
        assert torch.equal(logits(out), old_checkpoint[1])
    else:
        assert torch.equal(logits(out), old_checkpoint[1])  # the complete old checkpoint, unchanged
    if point == "write":
        assert [n.split("-")[0] for n in leftovers(out)] == [".ck.tmp"]  # half-written, never at the path
    # the next run on the path cleans (or repairs) the leftovers and writes the new checkpoint
    assert main(quantize_args(model_dir, out, 3, "--overwrite")) == 0
    assert leftovers(out) == [] and not any(out.parent.glob(f".{out.name}.work-*"))
    assert out.is_dir() and not torch.equal(logits(out), old_checkpoint[1])
