"""pvq.eval"""

from .perplexity import PerplexityResult, perplexity, perplexity_reference, perplexity_stepwise

__all__ = ["PerplexityResult", "perplexity", "perplexity_reference", "perplexity_stepwise"]
