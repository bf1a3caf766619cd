"""Tiny random decoder models shared by the tests (exposed as fixtures by ``conftest.py``).

Llama, Mistral and Qwen2 with GQA 4/2 heads, hidden 64 and MLP 176 = 2^4 * 11
(so group sizes must adapt per layer), 2 blocks, vocabulary 128.
"""

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pvq.models import QuantizedLinear

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
X = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(9))
"""Input ids ``[2, 24]`` for comparing logits."""


def tiny(family: str = "llama", seed: int = 0, **extra):
    """A tiny random model of ``family`` in eval mode (seeded)."""
    cfg_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    return model_cls(cfg_cls(**{**SHAPE, **extra})).eval()


def calib(n: int = 8, length: int = 32, seed: int = 1) -> torch.Tensor:
    """Seeded random calibration ids ``[n, length]``."""
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def quantized(model) -> dict[str, QuantizedLinear]:
    """The model's quantized layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (printable ASCII) that needs no download."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "\n": 1, **{chr(i): i - 30 for i in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
