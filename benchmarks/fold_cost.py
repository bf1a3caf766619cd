"""What the fused plan's fold costs a streamed run: one block's fold time, and the head fold's memory.

Folds a random float32 LM head of the shape's vocabulary x hidden size into a new tensor, row block
by row block (``rotation_plan._fold_head``, as ``write_streamed`` does), and prints the process's peak
resident set above what it held before (the input counted in the start); then builds one random
decoder block of the shape (float32) and folds it (``_fold_block``: float64 Hadamard transforms of
every linear) on ``--device``, timed.

    python benchmarks/fold_cost.py --shape 7b --device cpu
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from pvq.models.rotation_plan import FOLD_ROWS, StreamRotation, _fold_block, _fold_head
from pvq.transforms import RandomizedHadamard

SHAPES = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                     vocab_size=32000),
          "tiny": dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=8192)}


def rss_gib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="7b")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    cfg = LlamaConfig(**SHAPES[a.shape])
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():  # the head first: the process's peak resident set is a lifetime maximum
        head = torch.randn(cfg.vocab_size, cfg.hidden_size)
        start = rss_gib()
        t = time.perf_counter()
        _fold_head(RandomizedHadamard(cfg.hidden_size, 1), head, torch.rand(cfg.hidden_size), 0.0,
                   torch.empty_like(head))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{a.shape}: LM head {cfg.vocab_size} x {cfg.hidden_size} folded in row blocks of {FOLD_ROWS} in "
              f"{time.perf_counter() - t:.2f} s; peak resident {peak:.2f} GiB, {peak - start:.2f} GiB above the "
              f"start ({start:.2f} GiB with the head)", flush=True)
        del head
        block = LlamaDecoderLayer(cfg, 0).float().to(a.device)
        rec = StreamRotation("fused", cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads, 1, 2, "folded")
        sync()
        t = time.perf_counter()
        _fold_block(block, cfg, rec)
        sync()
        print(f"{a.shape}: one block folded on {a.device} ({torch.get_num_threads()} CPU threads) in "
              f"{time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
