"""pvq: pyramid vector quantization (and honest baselines) for large language models."""

__version__ = "0.1.0"
