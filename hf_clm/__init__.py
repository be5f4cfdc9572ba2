"""hf_clm: causal language modeling on the Hugging Face stack, from recipe to perplexity."""

__version__ = "0.1.0"

from hf_clm.errors import HfClmError

__all__ = ["HfClmError", "__version__"]
