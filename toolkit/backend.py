"""What llama.cpp can run on here: its compute devices and their free memory (ggml backend API)."""

from __future__ import annotations

import ctypes
import functools
import socket
from dataclasses import dataclass
from pathlib import Path

DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)  # ggml_abort_callback_t: called before abort()


@dataclass(frozen=True)
class Device:
    name: str  # e.g. "CUDA0", "CPU"
    description: str  # e.g. "NVIDIA GeForce RTX 3090"
    kind: str  # CPU / GPU / IGPU / ACCEL
    free_bytes: int
    total_bytes: int
    buffer_type: str = ""  # its weights' buffer type as llama.cpp logs it: CUDA0, RPC0[127.0.0.1:50052], CPU …


def _mapped(libdir: Path) -> list[Path]:
    """The libggml files of `libdir` already mapped into this process (Linux; elsewhere none)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {Path(line.split(maxsplit=5)[-1]) for line in maps.splitlines() if " /" in line}
    return sorted(p for p in paths if p.parent == libdir and p.name.split(".")[0] in ("libggml", "ggml"))


@functools.cache  # one handle per process: bench polls the devices every 0.2 s
def ggml() -> ctypes.CDLL:
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
    # Registering other backends (rpc.py: an RPC server's devices join the registry).
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_dev_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_dev_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    lib.ggml_set_abort_callback.argtypes = [ABORT_CALLBACK]
    lib.ggml_set_abort_callback.restype = ctypes.c_void_p
    return lib


def _answers(endpoint: str) -> bool:
    """Whether an RPC server ("host:port", as llama.cpp describes its devices) takes connections."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def devices() -> list[Device]:
    """Every device llama.cpp registered (the CPU always; CUDA devices in a CUDA build)."""
    import llama_cpp

    llama_cpp.llama_backend_init()  # registers and loads the backends
    lib = ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        name = (lib.ggml_backend_dev_name(dev) or b"").decode()
        description = (lib.ggml_backend_dev_description(dev) or b"").decode()
        # An RPC device's memory is asked over the wire, and llama.cpp aborts the process when its
        # server has gone: a server that no longer answers reports none.
        if not (name.startswith("RPC") and not _answers(description)):
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(Device(
            name=name,
            description=description,
            kind=DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "?"),
            free_bytes=free.value,
            total_bytes=total.value,
            buffer_type=(lib.ggml_backend_buft_name(lib.ggml_backend_dev_buffer_type(dev)) or b"").decode(),
        ))
    return found


def gpus() -> list[Device]:
    """GPUs llama.cpp can use, RPC servers' devices included (llama.cpp calls them GPUs)."""
    return [d for d in devices() if d.kind in ("GPU", "IGPU")]


def local_gpus() -> list[Device]:
    """This machine's own GPUs (whose memory nvidia-smi would show)."""
    return [d for d in gpus() if not is_rpc(d)]


def supports_gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def is_rpc(device: Device) -> bool:
    return device.name.startswith("RPC")


def offload_devices() -> list[Device]:
    """The devices llama.cpp offloads layers to, in its order (llama_prepare_model_devices): RPC
    servers' first, then discrete GPUs; integrated GPUs only when there is no discrete one."""
    found = devices()
    gpus = [d for d in found if d.kind == "GPU" and not is_rpc(d)]
    return [d for d in found if is_rpc(d)] + (gpus or [d for d in found if d.kind == "IGPU"])

