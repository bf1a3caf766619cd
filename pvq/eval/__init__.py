"""pvq.eval"""

from .perplexity import PerplexityResult, perplexity, perplexity_reference

__all__ = ["PerplexityResult", "perplexity", "perplexity_reference"]
