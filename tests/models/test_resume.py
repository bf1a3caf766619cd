"""Resumable, streamed and distributed ``pvq quantize``: a real run killed with SIGKILL in the middle of a
block is started again with the same arguments, continues at the first unfinished block and writes the
same checkpoint bytes as an uninterrupted run; a streamed run (one block at a time from safetensors
shards) writes the same tensors and config.json as the in-memory run; other arguments are refused;
two processes under torchrun (gloo, CPU) write the same tensors as one."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pvq.cli import main
from pvq.models.reference import CALIB_TEXT, REFERENCE_DIR
from processes import kill_at_pause

# Runs pvq's CLI and pauses (the test then sends SIGKILL) inside the n-th call of the solver.
RUNNER = textwrap.dedent('''
    import sys, time
    import pvq.cli, pvq.models.driver as dr
    n, args = int(sys.argv[1]), sys.argv[2:]
    solve, calls = dr.quantize_linear, [0]
    def quantize_linear(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            print("PAUSE", flush=True)
            time.sleep(600)
        return solve(*a, **k)
    dr.quantize_linear = quantize_linear
    sys.exit(pvq.cli.main(args))
''')
LAYERS_PER_BLOCK = 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A bf16 Llama of 3 blocks saved as several safetensors shards (with an index)."""
    path = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path, max_shard_size="300KB")
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 1
    return path


def args_of(model_dir, out, *extra, bits=3):
    return ["quantize", str(model_dir), "--bits", str(bits), "--dim", "8", "--samples", "4", "--seq-len", "16",
            "--calib", str(CALIB_TEXT), "--output", str(out), "--batch-size", "2", "--json", *extra]


def run(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def files(path: Path) -> dict[str, bytes]:
    """Every file of a checkpoint but the report (which holds timings)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "quantize_report.json"}


def tensors(path: Path) -> dict[str, bytes]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update({k: (str(v.dtype), tuple(v.shape), v.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                    for k, v in load_file(str(f)).items()})
    return out


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    """Checkpoints of uninterrupted runs, in memory and streamed."""
    import contextlib
    import io

    outs = {}
    # False: in memory (the default rotation plan at 3 bits, fused); True: streamed (fused: blocks folded as
    # they are read, the ends at the write); "layer" / "layer-stream": the layer plan in memory / streamed
    for key, extra in ((False, []), (True, ["--stream"]), ("layer", ["--rotation", "layer"]),
                       ("layer-stream", ["--rotation", "layer", "--stream"])):
        out = tmp_path_factory.mktemp("ref") / "ck"
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            assert main(args_of(model_dir, out, *extra)) == 0
        outs[key] = out
        outs[key, "summary"] = json.loads(text.getvalue().strip().splitlines()[-1])
    return outs


@pytest.mark.parametrize("plan", ["fused", "layer"])
def test_streamed_equals_in_memory(model_dir, uninterrupted, capsys, plan):
    capsys.readouterr()
    mem, st = (False, True) if plan == "fused" else ("layer", "layer-stream")
    a, b = uninterrupted[mem], uninterrupted[st]
    assert uninterrupted[st, "summary"]["rotation_plan"] == plan == uninterrupted[mem, "summary"]["rotation_plan"]
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and "lm_head.weight" in ta
    assert all(ta[k] == tb[k] for k in ta)  # every tensor, byte for byte (bf16 kept weights, codes, scales)
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()  # integrity record included
    assert len(list(b.glob("*.safetensors"))) == 3 + 3  # one shard per block, one per outside tensor
    if plan == "fused":  # the folded ends: the embedding and head rotated, the final norm ones
        src = {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        out = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        assert not torch.equal(out["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
        assert not torch.equal(out["lm_head.weight"], src["lm_head.weight"])
        assert out["model.norm.weight"].float().unique().tolist() == [1.0]
    # at most the embeddings (during the capture) or two float32 blocks (one read ahead) and the rotary tables
    model = LlamaForCausalLM.from_pretrained(model_dir)
    block = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    capture = sum(t.numel() * 4 for t in [*model.model.embed_tokens.parameters(), *model.model.norm.parameters()])
    buffers = sum(t.numel() * t.element_size() for t in model.buffers())
    whole = sum(p.numel() * 4 for p in model.parameters())
    peak = uninterrupted[True, "summary"]["resident_peak_bytes"]
    assert capture <= peak <= max(capture, 2 * block) + buffers < whole / 2
    assert uninterrupted[True, "summary"]["peak_cpu_bytes"] > 0


def kill_during(tmp_path, n: int, argv) -> None:
    kill_at_pause(tmp_path, RUNNER, [str(n), *argv], f"the solver's call {n}")


@pytest.mark.slow  # two processes each (the killed one, then the resumed run in this one)
@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_killed_run_resumes_to_the_same_bytes(model_dir, uninterrupted, tmp_path, capsys, stream):
    out = tmp_path / "ck"
    extra = ["--stream"] if stream else []
    kill_during(tmp_path, LAYERS_PER_BLOCK + 3, args_of(model_dir, out, *extra))  # inside block 1
    assert not out.exists()
    work = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ck.work-")]
    assert len(work) == 1 and sorted(p.name for p in (tmp_path / work[0]).glob("block-*")) == [
        "block-00000.json", "block-00000.safetensors"]
    # other arguments: refused, naming the difference; the work is kept
    assert main(args_of(model_dir, out, *extra, bits=4)) == 2
    assert "config.bits: 3.0 -> 4.0" in capsys.readouterr().err
    # the same arguments: block 0 is loaded, blocks 1 and 2 quantized; the same bytes
    summary = run(capsys, args_of(model_dir, out, *extra))
    assert summary["resumed_blocks"] == [0]
    assert files(out) == files(uninterrupted[stream])
    assert not any(p.name.startswith(".ck.") for p in tmp_path.iterdir())  # the work directory is gone


def test_no_resume_discards_the_work(model_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    kill_during(tmp_path, 2, args_of(model_dir, out))
    summary = run(capsys, args_of(model_dir, out, "--no-resume", bits=4))
    assert summary["resumed_blocks"] == [] and out.is_dir()
    assert not any(p.name.startswith(".ck.") for p in tmp_path.iterdir())


@pytest.mark.slow  # three processes: torchrun and two ranks
def test_two_processes_under_torchrun_equal_one(model_dir, uninterrupted, tmp_path):
    """Calibration batches split over 2 gloo ranks, Hessians added in rank order, linears solved on both
    ranks and broadcast; streamed. The same tensors and config.json as the one-process run (the float64
    Hessian sums associate differently, which here changes no code: see pvq/models/distributed.py)."""
    out = tmp_path / "ck"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(29500 + os.getpid() % 1000), "-m", "pvq",
                           *args_of(model_dir, out, "--stream", "--device", "cpu")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["world_size"] == 2  # rank 0 reports
    ref = uninterrupted[True]  # streamed, the fused plan
    assert tensors(out) == tensors(ref)
    assert (out / "config.json").read_bytes() == (ref / "config.json").read_bytes()


def test_streamed_equals_in_memory_gpt2(tiny_model, tmp_path, capsys):
    """Tied embeddings (the LM head is stored once) and transformers' Conv1D linears, blocks at transformer.h."""
    src = tmp_path / "gpt2"
    tiny_model("gpt2", vocab_size=8192).to(torch.bfloat16).save_pretrained(src, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(src)
    outs = [tmp_path / "memory", tmp_path / "streamed"]
    for out, extra in zip(outs, ([], ["--stream"])):
        run(capsys, args_of(src, out, "--method", "gptq", *extra))
    ta, tb = tensors(outs[0]), tensors(outs[1])
    assert ta.keys() == tb.keys() and "lm_head.weight" not in ta and all(ta[k] == tb[k] for k in ta)
    assert (outs[0] / "config.json").read_bytes() == (outs[1] / "config.json").read_bytes()


def test_stream_refuses_checkpoints_that_transformers_converts(tiny_model, tmp_path):
    """Mixtral is saved under its legacy per-expert names; the skeleton's names are not in the shards."""
    from pvq.errors import QuantizeError
    from pvq.models.streaming import open_streamed

    src = tmp_path / "mixtral"
    tiny_model("mixtral").save_pretrained(src)
    with pytest.raises(QuantizeError, match="quantize it without --stream"):
        open_streamed(src)


def test_stream_needs_an_output_and_a_safetensors_directory(tmp_path, capsys):
    assert main(["quantize", str(tmp_path), "--stream", "--output", str(tmp_path / "o")]) == 2
    assert "is not one (drop --stream)" in capsys.readouterr().err
    assert main(["quantize", "--stream"]) == 2
    assert "--stream needs --output" in capsys.readouterr().err


def test_driver_refuses_the_fused_plan_on_a_skeleton_without_a_block_reader(model_dir):
    """Under the fused plan a streamed skeleton's blocks are folded as its ``io`` reads them; without an
    ``io`` nothing would read them, so the driver refuses before any work."""
    from pvq.errors import QuantizeError
    from pvq.models.driver import quantize_model
    from pvq.models.methods import QuantizeConfig
    from pvq.models.streaming import open_streamed

    model, _, _ = open_streamed(model_dir)
    config = QuantizeConfig(method="pvq", bits=3, n_samples=2, seq_len=8)
    assert config.rotation_plan == "fused"
    with pytest.raises(QuantizeError, match="no block reader was given"):
        quantize_model(model, torch.zeros(2, 8, dtype=torch.long), config, device="cpu")


def test_stream_refuses_allocate_before_any_work(model_dir, tmp_path, capsys):
    assert main(["quantize", str(model_dir), "--stream", "--allocate", "--bits", "2.5",
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "drop --allocate or --stream" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # three runs of the CLI, one of them killed in a process of its own
def test_calib_dtype_source_streams_like_memory_and_resumes_only_with_the_same_dtype(model_dir, tmp_path, capsys):
    """``--calib-dtype source`` loads and calibrates the bf16 model in bf16: in memory and streamed give the
    same tensors, the summary says so, and a killed bf16 run is not resumed by a float32 one."""
    capsys.readouterr()
    extra = ["--calib-dtype", "source", "--rotation", "layer"]
    mem = run(capsys, args_of(model_dir, tmp_path / "mem", *extra))
    streamed = run(capsys, args_of(model_dir, tmp_path / "str", *extra, "--stream"))
    assert mem["calib_dtype"] == streamed["calib_dtype"] == "bfloat16"
    report = json.loads((tmp_path / "mem" / "quantize_report.json").read_text())
    assert any("calibration forwards run in bfloat16" in n for n in report["notes"])
    assert tensors(tmp_path / "mem") == tensors(tmp_path / "str")
    f32 = run(capsys, args_of(model_dir, tmp_path / "f32", "--rotation", "layer"))
    assert f32["calib_dtype"] == "float32" and f32["bits_per_weight"] == mem["bits_per_weight"]
    a, b = tensors(tmp_path / "mem"), tensors(tmp_path / "f32")
    assert a.keys() == b.keys() and any(a[k] != b[k] for k in a)  # bf16 activations: other Hessians, other codes
    out = tmp_path / "ck"
    kill_during(tmp_path, LAYERS_PER_BLOCK + 3, args_of(model_dir, out, *extra))
    assert main(args_of(model_dir, out, "--rotation", "layer")) == 2
    assert 'calib_dtype: "bfloat16" -> null' in capsys.readouterr().err


def test_streamed_fused_equals_in_memory_with_tied_embeddings(tmp_path, capsys):
    """Tied embeddings: the fused plan keeps the ends online (the stream rotated after the embedding and
    back before the final norm at run time); a streamed skeleton, whose loading breaks the sharing, must
    see the tie from the config and write what the in-memory run writes."""
    src = tmp_path / "tied"
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=8192, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(src, max_shard_size="300KB")
    AutoTokenizer.from_pretrained(REFERENCE_DIR).save_pretrained(src)
    capsys.readouterr()
    mem = run(capsys, args_of(src, tmp_path / "mem"))
    streamed = run(capsys, args_of(src, tmp_path / "str", "--stream"))
    assert mem["rotation_plan"] == streamed["rotation_plan"] == "fused"
    assert tensors(tmp_path / "mem") == tensors(tmp_path / "str")
    assert (tmp_path / "mem" / "config.json").read_bytes() == (tmp_path / "str" / "config.json").read_bytes()
    assert '"ends": "online"' in (tmp_path / "str" / "config.json").read_text()
