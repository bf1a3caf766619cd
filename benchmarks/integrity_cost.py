"""What the checkpoint integrity check costs on a 7B-sized checkpoint.

    python benchmarks/integrity_cost.py [--gb 2.9] [--dir /tmp/pvq-integrity]

Writes a synthetic checkpoint of the size a 7B model takes at 3 bits per weight
(6.5e9 linear weights x 3/8 bytes + two fp16 embeddings of 32000 x 4096: about
2.9 GB, in shards of 1 GB, 32 x 7 quantized layers), then times writing the
integrity record (sha256 of every tensor's bytes) and verifying it, as a
fraction of a plain read of the same files. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from pvq.models.format import integrity_record, verify_checkpoint


def make_checkpoint(path: Path, gb: float) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    emb = 32000 * 4096 * 2
    per_layer = int((gb * 1e9 - 2 * emb) / (32 * 7))
    tensors, shard, shards, weight_map = {}, 0, [], {}

    def flush():
        nonlocal tensors, shard
        if tensors:
            name = f"model-{shard:05d}.safetensors"
            save_file(tensors, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in tensors})
            shards.append(name)
            tensors, shard = {}, shard + 1

    g = torch.Generator().manual_seed(0)
    size = 0
    modules = {}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = torch.randn(32000, 4096, generator=g).half()
        size += emb
    for layer in range(32):
        for lin in ("q", "k", "v", "o", "gate", "up", "down"):
            mod = f"model.layers.{layer}.{lin}"
            tensors[f"{mod}.packed_codes"] = torch.randint(0, 256, (per_layer,), generator=g, dtype=torch.uint8)
            modules[mod] = {"codec": {"name": "pvq"}, "tensors": {"codes": {"shape": [per_layer], "dtype": "uint8"}}}
            size += per_layer
            if size > (len(shards) + 1) * 1e9:
                flush()
    flush()
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {"modules": modules, "format_version": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.9)
    p.add_argument("--dir", default="/tmp/pvq-integrity")
    a = p.parse_args()
    path = Path(a.dir)
    shutil.rmtree(path, ignore_errors=True)
    qdict = make_checkpoint(path, a.gb)
    total = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    t0 = time.perf_counter()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    qdict["integrity"] = integrity_record(path, qdict)
    record = time.perf_counter() - t0
    qdict["format_version"] = 2
    t0 = time.perf_counter()
    verify_checkpoint(path, qdict)
    verify = time.perf_counter() - t0
    print(f"checkpoint: {total / 1e9:.2f} GB in {len(list(path.glob('*.safetensors')))} shards, "
          f"{len(qdict['integrity']['tensors'])} tensors")
    print("| step | seconds | GB/s | x plain read |")
    print("|---|---|---|---|")
    for name, s in (("plain read (warm cache)", read), ("write the record", record), ("verify on load", verify)):
        print(f"| {name} | {s:.2f} | {total / 1e9 / s:.2f} | {s / read:.1f} |")
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
