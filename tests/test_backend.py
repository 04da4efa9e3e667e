import subprocess
import sys
from pathlib import Path

import pytest

# Run in a fresh interpreter: what matters is which ggml files one process ends up mapping.
PROBE = """
from pathlib import Path
import llama_cpp
from toolkit import backend
devices = backend.devices()
libdir = Path(llama_cpp.__file__).parent / "lib"
paths = {line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines() if " /" in line}
print("DEVICES", ",".join(d.kind for d in devices))
for p in sorted(paths):
    if Path(p).parent == libdir:
        print("MAPPED", Path(p).name)
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_devices_reuse_the_ggml_that_llama_cpp_loaded():
    # Wheels hold libggml.so, .so.0 and .so.0.x as separate files. Opening a second one maps a
    # second ggml with its own backend registry: devices listed there are not the ones in use.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    mapped = [line.split()[1] for line in out.splitlines() if line.startswith("MAPPED ")]
    ggml = [name for name in mapped if name.split(".")[0] == "libggml"]
    assert len(ggml) == 1, mapped
    assert "CPU" in out.split("DEVICES ")[1].splitlines()[0].split(",")


def test_llama_cpp_is_loaded_before_numpy():
    # With numpy's libraries loaded first, a CUDA build of llama.cpp segfaults in
    # llama_model_load_from_file (found on the lent H100/H200): importing toolkit loads llama.cpp first.
    probe = "import sys, toolkit.cli; m = list(sys.modules); print(m.index('llama_cpp.llama_cpp') < m.index('numpy'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
