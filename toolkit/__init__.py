"""toolkit: quantize Korean LLMs with llama.cpp and answer AI 말평 language-norm questions."""

__version__ = "0.1.0"
