"""llama.cpp's own command-line tools (llama-imatrix, llama-quantize, llama-perplexity,
llama-fit-params, ggml-rpc-server), built at setup time from the pinned sdist.

An importance matrix reaches llama.cpp's quantizer only as a C++ object, which the C API
cannot take from Python; llama.cpp's tools can. They are compiled from the same sdist (same
llama.cpp commit) as the runtime, with the same build flags, and live in the cache beside the
converter; `build.json` records how they were made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import console, vendor, versions
from .errors import InternalError, ToolsNotBuilt, UserError
from .fsutil import replace_dir
from .process import child

NAMES = ("llama-imatrix", "llama-quantize", "llama-perplexity", "llama-fit-params", "ggml-rpc-server")
# Not needed to build the tools: test data, docs, other backends' sources.
_SKIP = re.compile(r"(models|docs|tests|examples|media|benches|tools/ui|tools/server/public|"
                   r"ggml/src/ggml-(vulkan|sycl|opencl|hexagon|metal|webgpu|cann|zdnn|kompute))(/|$)")
_STEP = re.compile(r"^\[(\d+)/(\d+)\]")  # ninja's "[12/80] Building CXX object …"


_FLAG_VARS = ("CMAKE_ARGS", "CFLAGS", "CXXFLAGS")


def build_flags() -> dict[str, str]:
    """What a build takes from the environment, as the runtime's own does (CUDA, no-AMX)."""
    return {k: os.environ.get(k, "").strip() for k in _FLAG_VARS}


@dataclass(frozen=True)
class Tools:
    bin: Path
    commit: str
    flags: dict[str, str]  # build_flags() of the build

    def path(self, name: str) -> Path:
        return self.bin / name


def tools_dir() -> Path:
    return vendor.cache_root() / "llama.cpp" / f"{versions.LLAMA_CPP_PYTHON}-tools"


def find() -> Tools | None:
    root = tools_dir()
    try:
        info = json.loads((root / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("llama_cpp_python") != versions.LLAMA_CPP_PYTHON:
        return None
    if not all(os.access(root / "bin" / n, os.X_OK) for n in NAMES):
        return None
    return Tools(root / "bin", info.get("llama_cpp_commit", "unknown"), info.get("flags", {}))


def require() -> Tools:
    tools = find()
    if tools is None:
        raise ToolsNotBuilt(
            "llama.cpp's llama-imatrix and llama-quantize are not built: run `toolkit setup --tools` "
            "(a few minutes; needs cmake and a C++ compiler)"
        )
    return tools


def require_tool(name: str) -> Path:
    """One tool's path; a build from before it was among NAMES says how to get it."""
    root = tools_dir() / "bin"
    if os.access(root / name, os.X_OK):
        return root / name
    raise ToolsNotBuilt(f"llama.cpp's {name} is not built: run `toolkit setup --tools` (a few minutes; needs cmake "
                        "and a C++ compiler)")


def _cmake() -> str:
    if found := shutil.which("cmake"):
        return found
    try:  # the `cmake` package from PyPI (toolkit's `tools` extra)
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        raise UserError("cmake is needed to build llama.cpp's tools: `pip install cmake`") from None


def _generator() -> list[str]:
    if shutil.which("ninja"):
        return ["-G", "Ninja"]
    try:
        import ninja

        return ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={Path(ninja.BIN_DIR) / 'ninja'}"]
    except ImportError:
        return []


def build(force: bool = False, jobs: int | None = None) -> Tools:
    """Compile llama-imatrix, llama-quantize and llama-perplexity from the pinned sdist.

    CMAKE_ARGS, CFLAGS and CXXFLAGS from the environment are passed on, as for the runtime's own
    build (scripts/setup.sh sets them: CUDA, no-AMX); a build made with other flags is redone.
    Static libraries: the binaries need nothing from the build tree once copied.
    """
    flags = build_flags()
    existing = None if force else find()
    if existing is not None and existing.flags == flags:
        return existing  # built with these flags already
    cmake_args = flags["CMAKE_ARGS"].split()
    if not any(a.startswith("-DGGML_RPC") for a in cmake_args):
        cmake_args.append("-DGGML_RPC=ON")  # ggml-rpc-server exists only in an RPC build
    conv = vendor.require()
    sdist = vendor.download_sdist(vendor.cache_root() / "sdist")
    cmake = _cmake()
    root = tools_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tools-build-", dir=root.parent))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            vendor.extract_llama_cpp(tar, work / "src", lambda rel: not _SKIP.match(rel))
        configure = [cmake, "-S", str(work / "src"), "-B", str(work / "build"), *_generator(),
                     "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                     "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", *cmake_args]
        _run(configure, "configure llama.cpp")
        jobs = jobs or os.cpu_count() or 2
        _run([cmake, "--build", str(work / "build"), "--target", *NAMES, "-j", str(jobs)],
             "build llama.cpp's tools", steps=True)
        stage = work / "stage"  # the finished tools dir, moved into place in one rename
        (stage / "bin").mkdir(parents=True)
        for name in NAMES:
            built = next((p for p in (work / "build").rglob(name) if p.is_file() and os.access(p, os.X_OK)), None)
            if built is None:
                raise InternalError(f"the build finished but produced no {name}")
            shutil.copy2(built, stage / "bin" / name)
        info = {
            "llama_cpp_python": versions.LLAMA_CPP_PYTHON,
            "llama_cpp_commit": conv.commit,
            "flags": flags,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (stage / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(stage, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return require()


def _run(cmd: list[str], what: str, steps: bool = False) -> None:
    """Run a build command; with `steps`, show ninja's [n/m] as a progress bar."""
    tail: list[str] = []
    with console.step_progress() as progress:
        task = progress.add_task(what, total=None)
        with child(cmd, text=True, errors="replace") as proc:
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-30:]
                if steps and (m := _STEP.match(line)):
                    progress.update(task, completed=int(m.group(1)), total=int(m.group(2)))
            rc = proc.wait()
    if rc != 0:
        errors = [t for t in tail if "error" in t.lower()] or tail[-3:]
        raise InternalError(f"{what} failed (exit {rc}): {errors[-1] if errors else 'no output'}")
