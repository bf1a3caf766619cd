"""The rotation-plan argument of the benchmarks: ``layer``, ``fused``, ``none`` or ``fused:B`` (the fused plan with
its online rotations in chunks of B inputs, ``pvq quantize --rotation-block B``), and ``auto``: what ``pvq quantize``
picks for a method (:func:`resolve_plan`)."""

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


def resolve_plan(plan: str, codec: str, bits: float, width: int) -> str:
    """``plan``, or for ``"auto"`` the plan ``pvq quantize`` picks for ``codec`` at ``bits`` per weight in a Llama
    whose down_proj reads ``width`` inputs: the method's default (``default_rotation_plan``), the fused plan with its
    default chunk of that input (``fused:256`` for 11008)."""
    if plan != "auto":
        return plan
    from pvq.models.methods import get_method
    from pvq.models.plan import online_rotation_block
    from pvq.models.rotation_plan import default_rotation_plan

    chosen = default_rotation_plan(bits, get_method(codec).fused_from_bits)
    block = online_rotation_block(width, None) if chosen == "fused" else None
    return f"{chosen}:{block}" if block else chosen
