"""LoRA recovery between compression steps (LLM-Codebook's schedule), with ``peft``.

The decoder blocks are compressed in chunks. After each chunk (a hook the
driver's block loop calls: :class:`LoraRecovery`), LoRA adapters
are put on the ``nn.Linear`` layers of the blocks not compressed yet, trained
for a fixed number of steps on the calibration windows (next-token loss, the
model's own ``labels`` shift), merged into those linears' weights, and the next
chunk is compressed from the tuned weights. The compressed layers
(:class:`~pvq.models.QuantizedLinear`) are never trained: they are what the
checkpoint stores. The data order is seeded; it runs on CPU or on ``device``.
Training needs the whole model on ``device`` for the steps (the one-block-in-
memory promise of the driver does not hold during them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pvq.errors import QuantizeError

from .calibration import check_calibration
from .devices import resolve_device
from .structure import decoder_blocks

__all__ = ["BlockHook", "LoraRecovery", "LoraStats", "calibration_loss", "chunk_blocks", "lora_tune"]


@dataclass
class LoraStats:
    """One LoRA recovery step of the schedule: what was tuned and the calibration loss around it."""

    targets: list[str]
    steps: int
    loss_before: float
    loss_after: float
    seconds: float


@torch.no_grad()
def calibration_loss(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``calib_ids: [n, L]``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, calib_ids.shape[0], batch_size):
        ids = calib_ids[start : start + batch_size].to(device)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += float(out.loss) * n
        count += n
    return total / count


def _plain_linears(model: nn.Module, blocks: list[int]) -> list[str]:
    """Full names of the (not yet quantized) ``nn.Linear`` layers of ``blocks``."""
    path, layers = decoder_blocks(model)
    names = []
    for i in blocks:
        for n, m in layers[i].named_modules():
            if type(m) is nn.Linear:
                names.append(f"{path}.{i}.{n}")
    return names


def lora_tune(
    model: nn.Module,
    calib_ids: torch.Tensor,
    targets: list[str],
    steps: int,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    lr: float = 5e-4,
    batch_size: int = 4,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> LoraStats:
    """Train LoRA adapters on the linears named ``targets`` for ``steps`` steps, then merge them.

    calib_ids: ``[n, L]`` token ids; each step takes ``batch_size`` windows in
    a seeded random order (a new permutation per pass). AdamW with learning
    rate ``lr``; LoRA rank ``rank`` and scaling ``alpha / rank``. The model is
    changed in place (merged weights) and left in eval mode on its device.
    Returns the calibration loss before and after (full pass, no grad).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is a dependency of LoRA recovery
        raise QuantizeError("LoRA recovery needs the `peft` package: pip install peft") from e
    if not isinstance(steps, int) or steps < 0:
        raise QuantizeError(f"steps must be an integer >= 0, got {steps!r}")
    if not targets:
        raise QuantizeError("lora_tune needs at least one target linear layer")
    calib_ids = check_calibration(calib_ids, model)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    home = next(model.parameters()).device
    model.to(dev)
    before = calibration_loss(model, calib_ids)
    if steps == 0:
        model.to(home)
        return LoraStats(list(targets), 0, before, before, time.perf_counter() - t0)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(seed)  # LoRA A initialization
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    peft_model = get_peft_model(model, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = calib_ids.shape[0]
    order: list[int] = []
    peft_model.train()
    try:
        with torch.enable_grad():  # callers (the driver) may run under no_grad
            for _ in range(steps):
                if len(order) < min(batch_size, n):
                    order = torch.randperm(n, generator=gen).tolist()
                pick, order = order[:batch_size], order[batch_size:]
                ids = calib_ids[pick].to(dev)
                loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
                if not math.isfinite(float(loss.detach())):
                    raise QuantizeError("LoRA loss became non-finite; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        merged = peft_model.merge_and_unload()
        merged.eval()
        for name, p in merged.named_parameters():
            if name in flags:
                p.requires_grad_(flags[name])
    after = calibration_loss(merged, calib_ids)
    merged.to(home)
    return LoraStats(list(targets), steps, before, after, time.perf_counter() - t0)


def chunk_blocks(num_blocks: int, chunks: int) -> list[list[int]]:
    """Blocks ``0..num_blocks-1`` cut into ``chunks`` consecutive, near-equal chunks."""
    chunks = max(1, min(chunks, num_blocks))
    bounds = [i * num_blocks // chunks for i in range(chunks + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(chunks)]


class BlockHook:
    """Something the driver's block loop calls after each block (see :func:`pvq.models.quantize_model`)."""

    def after_block(self, model: nn.Module, calib_ids: torch.Tensor, block: int, num_blocks: int) -> str | None:
        """Run after block ``block`` (of ``num_blocks``) is quantized; returns a note for the report."""
        return None


@dataclass
class LoraRecovery(BlockHook):
    """LoRA recovery after each of ``chunks`` chunks of blocks but the last (LLM-Codebook's schedule).

    steps: LoRA steps per recovery (:func:`lora_tune`); seed: the seed of
    chunk ``c`` is ``seed + c``; options: further :func:`lora_tune` keywords.
    """

    steps: int
    chunks: int = 4
    seed: int = 0
    device: torch.device | str | None = None
    options: dict = field(default_factory=dict)
    history: list[LoraStats] = field(default_factory=list)

    def after_block(self, model, calib_ids, block, num_blocks):
        schedule = chunk_blocks(num_blocks, self.chunks)
        ends = {c[-1]: k for k, c in enumerate(schedule)}
        if self.steps <= 0 or block not in ends or ends[block] == len(schedule) - 1:
            return None
        c = ends[block]
        rest = [b for later in schedule[c + 1 :] for b in later]
        st = lora_tune(model, calib_ids, _plain_linears(model, rest), self.steps,
                       seed=self.seed + c, device=self.device, **self.options)
        self.history.append(st)
        chunk = schedule[c]
        return (f"LoRA after blocks {chunk[0]}-{chunk[-1]}: {st.steps} steps on {len(st.targets)} linears, "
                f"calibration loss {st.loss_before:.4f} -> {st.loss_after:.4f} ({st.seconds:.1f}s)")
