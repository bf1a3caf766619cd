"""Registration of the ``pvq`` quantization method with ``transformers``.

Importing this module registers the quantizer (:func:`register`, idempotent);
``import pvq`` arranges for that import to happen as soon as
``transformers.quantizers.auto`` is imported (see ``pvq/__init__.py`` for why
it is a hook). Then ``AutoModelForCausalLM.from_pretrained(dir)``
on a pvq checkpoint builds the model skeleton, swaps every linear named in
``quantization_config["modules"]`` for an empty :class:`QuantizedLinear`
(buffers with the configured shapes and dtypes) and lets transformers load
the stored tensors into them: the codes are bit-identical to the saved ones.

Uses ``transformers.quantizers.auto.register_quantization_config`` and
``register_quantizer`` with an ``HfQuantizer`` subclass (transformers 5.x).
If the installed version cannot load through it, :func:`pvq.models.load_quantized`
loads the checkpoint directly.
"""

from __future__ import annotations

from pathlib import Path

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from pvq.errors import CheckpointError, QuantizeError

from .format import (FORMAT_VERSION, QUANT_METHOD, READABLE_VERSIONS, install_model_rotation, replace_linears,
                     verify_checkpoint)
from .coding import decode_entropy_coded
from .qlinear import QuantizedLinear

__all__ = ["PvqConfig", "PvqHfQuantizer", "register"]


class PvqConfig(QuantizationConfigMixin):
    """``quantization_config`` of a pvq checkpoint (see :mod:`pvq.models.checkpoint`)."""

    def __init__(
        self,
        method: str = "pvq",
        bits: float | None = None,
        bits_per_weight: float | None = None,
        modules: dict | None = None,
        config: dict | None = None,
        pvq_version: str | None = None,
        format_version: int = FORMAT_VERSION,
        **kwargs,
    ):
        self.quant_method = QUANT_METHOD
        self.method = method
        self.bits = bits
        self.bits_per_weight = bits_per_weight
        self.modules = dict(modules or {})
        self.config = dict(config or {})
        self.pvq_version = pvq_version
        self.format_version = int(format_version)
        kwargs.pop("quant_method", None)
        for k, v in kwargs.items():  # fields of newer minor versions travel along unchanged
            setattr(self, k, v)
        if self.format_version not in READABLE_VERSIONS:
            raise CheckpointError(
                f"pvq checkpoint format {self.format_version} is not one this pvq reads {READABLE_VERSIONS}"
                + ("; upgrade pvq" if self.format_version > FORMAT_VERSION else "")
            )

    def as_dict(self) -> dict:
        return self.to_dict()


class PvqHfQuantizer(HfQuantizer):
    """Loads pre-quantized pvq checkpoints (quantizing inside from_pretrained is not supported)."""

    requires_calibration = True

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        if not self.pre_quantized:
            raise QuantizeError(
                "pvq quantizes with calibration data: use pvq.models.quantize_model (or `pvq quantize`), "
                "then load the saved directory with from_pretrained"
            )

    def validate_environment(self, *args, **kwargs):
        if not self.quantization_config.modules:
            raise QuantizeError("the pvq quantization_config names no quantized modules; the checkpoint is incomplete")

    def _process_model_before_weight_loading(self, model, **kwargs):
        path = _checkpoint_dir(getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None))
        if path is None:
            raise CheckpointError(
                "cannot locate the files of this pvq checkpoint to verify them against its integrity record; "
                "load it from a local directory (or a downloaded hub snapshot)"
            )
        verify_checkpoint(path, self.quantization_config.to_dict())
        replace_linears(model, {"modules": self.quantization_config.modules,
                                "experts": getattr(self.quantization_config, "experts", None) or {}})
        _skip_parent_init(model, self.quantization_config.modules)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        unloaded = [
            n for n, m in model.named_modules()
            if isinstance(m, QuantizedLinear) and any(t.device.type == "meta" for t in m.stored_tensors().values())
        ]
        if unloaded:
            raise QuantizeError(f"the checkpoint lacks the stored tensors of {unloaded[:8]}; it is incomplete")
        decode_entropy_coded(model, getattr(model.config, "_name_or_path", None) or "the checkpoint")
        install_model_rotation(model, self.quantization_config.to_dict())
        return model

    def is_serializable(self, *args, **kwargs):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def _skip_parent_init(model, names) -> None:
    """Mark the parents of the quantized modules as initialized when they hold no tensor of their own.

    transformers initializes, after loading, the modules it does not see as fully loaded, and
    some families' ``_init_weights`` reach into a child's ``.weight`` from the parent (GPT-2,
    GPT-BigCode: ``module.c_proj.weight``), which a :class:`QuantizedLinear` does not have.
    A parent without parameters or buffers of its own has nothing to initialize itself.
    """
    for name in names:
        if "." not in name:  # a top-level module (the LM head): its parent is the model itself
            continue
        parent = model.get_submodule(name.rpartition(".")[0])
        if next(parent.parameters(recurse=False), None) is None and next(parent.buffers(recurse=False), None) is None:
            parent._is_hf_initialized = True


def _checkpoint_dir(name_or_path) -> Path | None:
    """The local directory of a checkpoint given as a directory or a hub id already downloaded."""
    if not name_or_path:
        return None
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # not a hub id, or not in the local cache
        return None


def register() -> bool:
    """Register ``quant_method="pvq"`` with transformers (idempotent). Returns True if it registered now."""
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is PvqHfQuantizer:
        return False
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PvqConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PvqHfQuantizer)
    return True


register()
