"""The device argument of the GPU benchmarks: CUDA, or the CPU under Triton's interpreter as a smoke test."""

from __future__ import annotations

import argparse
import os

import torch


def benchmark_device(p: argparse.ArgumentParser, requested: str | None) -> torch.device:
    """``requested`` (default cuda) where it can run: CUDA present, or off CUDA only with ``TRITON_INTERPRET=1``;
    else ``p.error`` with what to change."""
    device = torch.device(requested or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here (or --device cpu under TRITON_INTERPRET=1, a smoke test)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("off CUDA the kernels run Triton's interpreter: set TRITON_INTERPRET=1")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def captured_graph(fn, device: torch.device, warmup: int = 2) -> "torch.cuda.CUDAGraph":
    """``fn`` captured in a CUDA graph after ``warmup`` calls on a side stream (Triton's first launches compile, the
    allocator settles), replayed once."""
    cur = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    cur.wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize(device)
    return graph


def median_event_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` between two CUDA events on the current stream."""
    import statistics

    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
