"""toolkit: quantize Korean LLMs with llama.cpp and answer AI 말평 language-norm questions."""

import importlib

__version__ = "0.1.0"

# llama.cpp's libraries must be loaded before numpy's: with numpy imported first, a CUDA build
# segfaults in llama_model_load_from_file (seen on H100 and H200; CPU builds are unaffected).
try:
    importlib.import_module("llama_cpp")
except Exception:  # not installed or broken: `toolkit doctor` says so
    pass
