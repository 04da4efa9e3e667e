"""What llama.cpp can run on here: its compute devices and their free memory (ggml backend API)."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


@dataclass(frozen=True)
class Device:
    name: str  # e.g. "CUDA0", "CPU"
    description: str  # e.g. "NVIDIA GeForce RTX 3090"
    kind: str  # CPU / GPU / IGPU / ACCEL
    free_bytes: int
    total_bytes: int


def _mapped(libdir: Path) -> list[Path]:
    """The libggml files of `libdir` already mapped into this process (Linux; elsewhere none)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {Path(line.split(maxsplit=5)[-1]) for line in maps.splitlines() if " /" in line}
    return sorted(p for p in paths if p.parent == libdir and p.name.split(".")[0] in ("libggml", "ggml"))


@functools.cache  # one handle per process: bench polls the devices every 0.2 s
def _ggml() -> ctypes.CDLL:
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    # The copy libllama already loaded, not merely the first file named libggml.*: wheels hold
    # libggml.so, .so.0 and .so.0.x as separate files, and opening another one maps a second
    # ggml with its own backend registry, whose devices and free memory are not the ones in use.
    candidates = _mapped(libdir) + sorted(libdir.glob("libggml.*")) + sorted(libdir.glob("ggml.*"))
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def devices() -> list[Device]:
    """Every device llama.cpp registered (the CPU always; CUDA devices in a CUDA build)."""
    import llama_cpp

    llama_cpp.llama_backend_init()  # registers and loads the backends
    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(
            name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
            kind=DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "?"),
            free_bytes=free.value,
            total_bytes=total.value,
        ))
    return found


def gpus() -> list[Device]:
    return [d for d in devices() if d.kind in ("GPU", "IGPU")]


def supports_gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())
