"""The shipped reference model (pvq/assets/reference) loads and still works.

A broken or swapped model fails the perplexity bound below; an edited
held-out text fails the manifest hash recorded in the model card.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pvq

ASSET_DIR = Path(pvq.__file__).resolve().parent / "assets" / "reference"

# Perplexity of the shipped weights (float32, CPU) on the first PPL_TOKENS tokens
# of heldout.txt, windows of 512 tokens with stride 512 (each window's first
# token unscored), measured when the model was added: 8.2810 (2026-11-22,
# torch 2.13 CPU, transformers 5.23). The bound allows 2% for numerics.
PPL_TOKENS = 8192
MEASURED_PPL = 8.2810
PPL_BOUND = MEASURED_PPL * 1.02

EXPECTED_CONFIG = {
    "model_type": "llama",
    "vocab_size": 8192,
    "hidden_size": 384,
    "intermediate_size": 1032,
    "num_hidden_layers": 8,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}
EXPECTED_PARAMS = 15_808_896
MAX_WEIGHT_BYTES = 40_000_000


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(ASSET_DIR, dtype=torch.float32)
    m.eval()
    return m


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSET_DIR)


def test_asset_files_present_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "README.md", "heldout.txt", "calib.txt"):
        assert (ASSET_DIR / name).is_file(), name
    assert (ASSET_DIR / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES


def test_shipped_texts_match_model_card_manifest():
    card = (ASSET_DIR / "README.md").read_text()
    for split, name in (("heldout", "heldout.txt"), ("calib", "calib.txt")):
        row = re.search(rf"^\| {split} \|.*`([0-9a-f]{{64}})` \|$", card, re.MULTILINE)
        assert row, f"no manifest row for {split} in the model card"
        digest = hashlib.sha256((ASSET_DIR / name).read_bytes()).hexdigest()
        assert digest == row.group(1), f"{name} does not match the manifest in README.md"


def test_weights_match_model_card_hash():
    card = (ASSET_DIR / "README.md").read_text()
    recorded = re.search(r"`model.safetensors`.*?sha256 `([0-9a-f]{64})`", card)
    assert recorded, "no sha256 of model.safetensors in the model card"
    digest = hashlib.sha256((ASSET_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert digest == recorded.group(1), "model.safetensors changed: update the model card (and the bound)"


def test_config_and_parameters(model):
    cfg = model.config
    for key, value in EXPECTED_CONFIG.items():
        assert getattr(cfg, key) == value, key
    rope = getattr(cfg, "rope_parameters", None) or {}
    assert rope.get("rope_theta", getattr(cfg, "rope_theta", None)) == 10000.0
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_tokenizer_round_trip(tokenizer):
    assert len(tokenizer) == 8192
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert tokenizer.pad_token_id == 1
    text = (ASSET_DIR / "heldout.txt").read_text()[:20000] + "\n# ünïcode ✓ \t\r\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert max(ids) < 8192


def windowed_perplexity(model, ids: torch.Tensor, context: int = 512) -> float:
    """exp(mean NLL) over disjoint windows of ``context`` tokens (stride = context)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, context):
            x = ids[start:start + context][None]
            logp = F.log_softmax(model(input_ids=x).logits.float(), dim=-1)
            nll = -logp[0, :-1].gather(-1, x[0, 1:, None])
            total += float(nll.double().sum())
            count += nll.numel()
    return math.exp(total / count)


def test_heldout_perplexity_below_measured_bound(model, tokenizer):
    text = (ASSET_DIR / "heldout.txt").read_text()[:60000]  # about 18k tokens
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids[:PPL_TOKENS])
    assert ids.numel() == PPL_TOKENS
    ppl = windowed_perplexity(model, ids)
    assert ppl < PPL_BOUND, f"held-out perplexity {ppl:.4f} >= bound {PPL_BOUND:.4f}"
    assert ppl > 2.0  # a sanity floor: not leaked or degenerate
