"""streamline: layer pruning of decoder-only LLMs (LLM-Streamline), one stage per module."""

__version__ = "0.1.0"
