"""Several processes (GPUs) on one run through ``torch.distributed``.

``torchrun --nproc-per-node N python -m pvq quantize ...`` starts N ranks;
:func:`init_from_env` joins them (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``;
gloo on CPU). :class:`Parallel` is the driver's hook (``quantize_model(..., parallel=p)``):

* **calibration**: the calibration batches (of ``batch_size`` samples, as one
  process forms them) are split into N contiguous runs, one per rank
  (:meth:`Parallel.local_samples`); each rank captures its batches' inputs, runs
  them through the blocks and accumulates their Hessians;
* **Hessians**: each rank's float64 sums are all-gathered and added in rank
  order on every rank (:meth:`Parallel.reduce`), never with an all-reduce whose
  order the backend picks, so every rank holds the same bits;
* **linears**: the linears of a stage are dealt round-robin to the ranks; each
  rank quantizes its own, then every result is broadcast from its rank, in stage
  order (:meth:`Parallel.run_stage`); all ranks install the same modules.

Only rank 0 writes the work directory, the checkpoint and the log.

What is guaranteed: the same N, batch size and arguments give the same codes
on every run and on every rank (the reduction order is fixed). Against one
process, the only difference is the association of the float64 Hessian sum
(rank partial sums added in order, instead of one running sum): each Hessian
entry agrees to float64 rounding (about 1e-16 relative), and codes are
identical unless such a rounding changes a decision of the solver (the test
checks they are identical on the tiny model). Mixture-of-experts blocks are
refused (their routed Hessians are not split yet).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist

from pvq.errors import QuantizeError

__all__ = ["Parallel", "init_from_env"]


def init_from_env(device: torch.device | None = None) -> "Parallel | None":
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else None.

    Returns the :class:`Parallel` of this rank, its device set (``cuda:LOCAL_RANK`` with CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    use_cuda = (device is None or torch.device(device).type == "cuda") and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Parallel(dist.get_rank(), dist.get_world_size(), dev)


class Parallel:
    """One rank of a distributed run (see the module docstring)."""

    def __init__(self, rank: int, world: int, device: torch.device):
        if not 0 <= rank < world:
            raise QuantizeError(f"rank {rank} is not in [0, {world})")
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_samples(self, n_samples: int, batch_size: int) -> slice:
        """This rank's calibration samples: a contiguous run of whole batches (batch ``b`` of
        ``ceil(n / batch_size)`` goes to rank ``b * N // batches``)."""
        batches = -(-n_samples // batch_size)
        if batches < self.world:
            raise QuantizeError(f"{n_samples} calibration samples make {batches} batches of {batch_size}, fewer "
                                f"than the {self.world} ranks; use more --samples or fewer processes")
        first = [b for b in range(batches) if b * self.world // batches == self.rank]
        return slice(first[0] * batch_size, min(n_samples, (first[-1] + 1) * batch_size))

    def reduce(self, accs: dict) -> None:
        """Sum the Hessian accumulators over the ranks, in rank order, in place (names in order)."""
        reduced: set[int] = set()
        for name in accs:  # dict order: the stage's order, the same on every rank
            a = accs[name]
            if id(a) in reduced:  # linears that share an input share one accumulator
                continue
            reduced.add(id(a))
            parts = [torch.empty_like(a.sum) for _ in range(self.world)]
            dist.all_gather(parts, a.sum.contiguous())
            tokens = [None] * self.world
            dist.all_gather_object(tokens, a.tokens)
            total = parts[0].clone()
            for p in parts[1:]:
                total += p
            a.sum, a.tokens = total, int(sum(tokens))

    def owner(self, k: int) -> int:
        """The rank that quantizes the ``k``-th linear of a stage."""
        return k % self.world

    def run_stage(self, names: list[str], quantize) -> dict:
        """``{name: quantize(name)}`` with each ``quantize(name)`` (a (module, ...) tuple) run on its
        owner only and broadcast to every rank (modules on the CPU in transit)."""
        mine = {n: quantize(n) for k, n in enumerate(names) if self.owner(k) == self.rank}
        out = {}
        for k, n in enumerate(names):
            src = self.owner(k)
            box = [None]
            if src == self.rank:
                q, *rest = mine[n]
                sent = copy.deepcopy(q).to("cpu")
                sent.clear_cache()
                box = [(sent, *rest)]
            dist.broadcast_object_list(box, src=src, device=self.device if self.device.type == "cuda" else None)
            out[n] = mine[n] if src == self.rank else (box[0][0].to(self.device), *box[0][1:])
        return out

    def barrier(self) -> None:
        dist.barrier()
