"""The rotation-plan argument of the benchmarks: ``layer``, ``fused``, ``none`` or ``fused:B`` (the fused plan with
its online rotations in chunks of B inputs, ``pvq quantize --rotation-block B``)."""

from __future__ import annotations

PLANS = ("fused", "layer", "none")


def parse_plan(text: str, plans: tuple[str, ...] = PLANS) -> tuple[str, int | None] | None:
    """``"fused"`` -> ("fused", None); ``"fused:256"`` -> ("fused", 256); None when malformed or not in ``plans``."""
    plan, colon, block = text.partition(":")
    if plan not in plans or (colon and (plan != "fused" or not block.isdigit() or int(block) < 2)):
        return None
    return plan, int(block) if block else None


def online_rotation_seeds(plan: str, keeps_input: bool, seed: int) -> dict | None:
    """The rotation seeds of a layer under ``plan`` (a :func:`parse_plan` text): ``layer`` both sides; ``fused``
    the input side where the layer keeps one online (``keeps_input``: down_proj), in chunks for ``fused:B``; else
    None."""
    kind, block = parse_plan(plan)
    if kind == "layer":
        return {"out_seed": seed, "in_seed": seed + 1}
    if kind == "none" or not keeps_input:
        return None
    seeds = {"out_seed": None, "in_seed": seed + 1}
    return seeds if block is None else {**seeds, "in_block": block}
