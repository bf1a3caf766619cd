"""Tiny random decoder models shared by the tests (exposed as fixtures by ``conftest.py``).

Llama, Mistral and Qwen2 with GQA 4/2 heads, hidden 64 and MLP 176 = 2^4 * 11
(so group sizes must adapt per layer), 2 blocks, vocabulary 128. Every other
family in :data:`FAMILY_CONFIGS` is built from its transformers config class
with the same shape (the family's own names for the sizes where it has them)
and, for mixture-of-experts families, 4 experts of which 2 per token.
"""

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from pvq.models import QuantizedLinear

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96)

# family -> (transformers model_type, config overrides on SHAPE); MoE families also take MOE
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "gemma": ("gemma", {"head_dim": 16}),
    "gemma2": ("gemma2", {"head_dim": 16}),
    "gemma3": ("gemma3_text", {"head_dim": 16}),
    "phi": ("phi", {}),
    "phi3": ("phi3", {"pad_token_id": 0}),
    "starcoder2": ("starcoder2", {}),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {}),
    "cohere": ("cohere", {}),
    "stablelm": ("stablelm", {}),
    "gpt2": ("gpt2", {"n_inner": 176}),  # Conv1D linears, blocks at transformer.h
    "gpt_neox": ("gpt_neox", {}),
    "opt": ("opt", {"ffn_dim": 176, "word_embed_proj_dim": 64}),
    "falcon": ("falcon", {"ffn_hidden_size": 176, "new_decoder_architecture": True, "num_kv_heads": 2}),
    "bloom": ("bloom", {}),  # MLP fixed at 4 * hidden
    "gptj": ("gptj", {"n_inner": 176, "rotary_dim": 8}),
    "gpt_bigcode": ("gpt_bigcode", {"n_inner": 176}),
    "mixtral": ("mixtral", {}),
    "qwen3_moe": ("qwen3_moe", {}),
    "olmoe": ("olmoe", {}),
    "granitemoe": ("granitemoe", {}),
    "gpt_oss": ("gpt_oss", {"head_dim": 16, "sliding_window": 16,
                            "layer_types": ["sliding_attention", "full_attention"]}),
    "qwen2_moe": ("qwen2_moe", {"shared_expert_intermediate_size": 96, "decoder_sparse_step": 1,
                                "mlp_only_layers": []}),
    "deepseek_v3": ("deepseek_v3", {"n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1,
                                    "n_group": 1, "topk_group": 1, "num_key_value_heads": 4, "q_lora_rank": 32,
                                    "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                                    "v_head_dim": 16}),
}
MOE_FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "granitemoe", "gpt_oss", "qwen2_moe", "deepseek_v3")
DENSE_FAMILIES = tuple(f for f in FAMILY_CONFIGS if f not in MOE_FAMILIES)

X = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(9))
"""Input ids ``[2, 24]`` for comparing logits."""


def family_available(family: str) -> bool:
    """True when the installed transformers has the family's config class."""
    return FAMILY_CONFIGS[family][0] in CONFIG_MAPPING


def tiny(family: str = "llama", seed: int = 0, **extra):
    """A tiny random model of ``family`` in eval mode (seeded)."""
    torch.manual_seed(seed)
    if family in FAMILIES:
        cfg_cls, model_cls = FAMILIES[family]
        return model_cls(cfg_cls(**{**SHAPE, **extra})).eval()
    model_type, over = FAMILY_CONFIGS[family]
    kw = {**SHAPE, **(MOE if family in MOE_FAMILIES else {}), **over, **extra}
    return AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**kw)).eval()


def calib(n: int = 8, length: int = 32, seed: int = 1) -> torch.Tensor:
    """Seeded random calibration ids ``[n, length]``."""
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def quantize_tables(tied: bool, plan: str = "fused", bits: float = 3.0, head: bool = True, embedding: bool = False,
                    **kw):
    """(tiny Llama, its :class:`QuantizeReport`): pvq at ``bits`` under the rotation ``plan`` with the LM head
    (``head``) and the input embedding (``embedding``) quantized too; ``kw`` goes to ``quantize_model``."""
    from pvq.models import QuantizeConfig, quantize_model

    m = tiny("llama", tie_word_embeddings=tied)
    cfg = QuantizeConfig(method="pvq", bits=bits, quantize_head=head, quantize_embedding=embedding, rotation=plan,
                         n_samples=8, seq_len=32)
    return m, quantize_model(m, calib(), cfg, progress=False, log=None, **kw)


def tiny_logits(x: torch.Tensor, family: str = "llama", **extra) -> torch.Tensor:
    """Logits on ``x`` of the unquantized ``tiny(family, **extra)``."""
    with torch.no_grad():
        return tiny(family, **extra)(x).logits


def saved_and_loaded(model, report, path, via: str, x: torch.Tensor):
    """(model's logits on ``x``, the model saved to ``path`` and loaded back ``via`` a loader, its logits)."""
    from pvq.models.checkpoint import load_quantized, save_quantized

    with torch.no_grad():
        want = model(x).logits
    save_quantized(model, path, report)
    loaded = load_quantized(path, via=via)
    with torch.no_grad():
        return want, loaded, loaded(x).logits


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
