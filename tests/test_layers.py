"""A house in layers: no toolkit module imports one of a higher layer, and each imports on its own.

The layers follow the pipeline (source → convert → quantize → prompts, references, examples →
engine → clean → write → score) where the imports allow it; where a module drives later stages
(quantize loads the result in the engine, infer writes and votes) it sits above them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "toolkit"

# Lowest first. A module may import modules of lower layers only: none of a higher one, and none
# of its own layer unless ALLOWED names the pair. Names are relative to toolkit; "__init__" is the
# package itself (`from . import __version__`), and a package listed here ("cli") stands for
# everything under it, whose modules may import each other.
LAYERS: list[tuple[str, list[str]]] = [
    ("ground: no toolkit imports", ["__init__", "errors", "versions", "console", "process", "llama_log", "backend",
                                    "converter_entry"]),
    ("files and formats", ["fsutil", "gguf", "weights", "embedded"]),
    ("the llama.cpp checkout, task files, GGUF readings", ["vendor", "dataset", "fit", "inspection"]),
    ("llama.cpp's tools, the models' manifest", ["tools", "manifest"]),
    ("other machines' devices over llama.cpp's RPC", ["rpc"]),
    ("stage 1: source", ["source"]),
    ("stage 2: convert (and PEFT adapters)", ["convert", "adapter"]),
    ("stage 3: llama-quantize, LoRA GGUFs", ["quantizer", "lora"]),
    ("text: bundled samples, questions, the answer form, Korean morphemes", ["samples", "question", "answer", "korean"]),
    ("prompts, chat templates, labels, the reference document", ["prompts", "chat_template", "labels", "references"]),
    ("sampling, answer constraints, routing", ["sampler", "constraints", "route"]),
    ("references and examples for each question", ["retrieve"]),
    ("engine", ["engine"]),
    ("on the engine and after it: batches, cleaning, votes, fidelity, calibration",
     ["parallel", "clean", "vote", "fidelity", "imatrix"]),
    ("the pipelines: checkpoint → GGUFs, questions → answers", ["quantize", "infer"]),
    ("measuring: answers against gold, retrieval against labels", ["score", "recall"]),
    ("the commands' own modules", ["demo", "doctor", "bench", "printing"]),
    ("command line", ["cli"]),
    ("python -m toolkit", ["__main__"]),
]
ALLOWED: set[tuple[str, str]] = set()  # (importer, imported) of one layer; none: strict

LAYER_OF = {name: n for n, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """`toolkit/x.py` → "x", `toolkit/cli/__init__.py` → "cli", `toolkit/__init__.py` → "__init__"."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def unit_of(name: str) -> str | None:
    """The LAYERS entry a module falls under: itself, else the nearest listed package above it."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in LAYER_OF:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, source: str) -> list[tuple[int, str, str]]:
    """(line, statement, imported toolkit module) of every import in the source, at module level
    or inside functions: `import toolkit.x`, `from toolkit import x`, `from .x import y`, `from . import x`."""
    tree = ast.parse(source)
    is_package = module == "__init__" or (PACKAGE.joinpath(*module.split(".")) / "__init__.py").is_file()
    here = [] if module == "__init__" else module.split(".")
    package = here if is_package else here[:-1]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "toolkit":
                    targets.append("")
                elif alias.name.startswith("toolkit."):
                    targets.append(alias.name.removeprefix("toolkit."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    raise AssertionError(f"{module}: `{ast.unparse(node)}` reaches above the toolkit package")
                base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module == "toolkit" or (node.module or "").startswith("toolkit."):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import x`: the module x where there is one, else the package's name x
                sub = ".".join(base + [alias.name])
                targets.append(sub if alias.name != "*" and is_module(sub) else ".".join(base))
        found += [(node.lineno, ast.unparse(node), t or "__init__") for t in dict.fromkeys(targets)]
    return found


def violations(module: str, source: str) -> list[str]:
    """Each import of a higher layer, of the same layer (unless ALLOWED) or of a module in no layer."""
    unit = unit_of(module)
    if unit is None:
        return [f"{module}: in no layer of tests/test_layers.py's LAYERS"]
    out = []
    for line, statement, target in imports_of(module, source):
        other = unit_of(target)
        where = f"{module} (layer {LAYER_OF[unit]}) line {line}: `{statement}`"
        if other is None:
            out.append(f"{where} imports {target}, which is in no layer")
        elif other == unit:
            continue
        elif LAYER_OF[other] > LAYER_OF[unit]:
            out.append(f"{where} imports {target} of higher layer {LAYER_OF[other]} ({LAYERS[LAYER_OF[other]][0]})")
        elif LAYER_OF[other] == LAYER_OF[unit] and (unit, other) not in ALLOWED:
            out.append(f"{where} imports {target} of its own layer (not in ALLOWED)")
    return out


def test_every_module_is_in_exactly_one_layer():
    listed = [name for _, names in LAYERS for name in names]
    assert len(listed) == len(set(listed)), sorted({n for n in listed if listed.count(n) > 1})
    modules = package_modules()
    unlisted = sorted(m for m in modules if unit_of(m) is None)
    assert not unlisted, f"toolkit modules in no layer (add them to LAYERS): {unlisted}"
    stale = sorted(set(listed) - {unit_of(m) for m in modules})
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_module_imports_a_higher_layer():
    found = [v for name, path in package_modules().items() for v in violations(name, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_the_layer_check_reports_imports_upward_and_sideways():
    def check(module, source):
        return violations(module, source)

    # Upward, at module level and inside a function, in each spelling.
    assert "imports infer of higher layer" in " ".join(check("errors", "def f():\n    from .infer import infer\n"))
    assert "imports cli of higher layer" in " ".join(check("gguf", "import toolkit.cli\n"))
    assert "imports cli of higher layer" in " ".join(check("gguf", "from toolkit.cli import main\n"))
    assert "imports score of higher layer" in " ".join(check("korean", "from . import console, score\n"))
    assert "imports demo of higher layer" in " ".join(check("samples", "from toolkit import demo\n"))
    assert f"of higher layer {LAYER_OF['cli']}" in " ".join(check("doctor", "from .cli import _options\n"))
    # The statement and its line are named.
    [message] = check("source", "import os\n\nfrom .convert import convert\n")
    assert message.startswith(f"source (layer {LAYER_OF['source']}) line 3: `from .convert import convert` imports convert")
    # Sideways: the same layer, strict unless allowed.
    assert "of its own layer" in " ".join(check("bench", "from . import demo\n"))
    # Unknown modules are named, not passed.
    assert "in no layer" in " ".join(check("score", "from .nowhere import x\n"))
    assert check("nowhere", "") == ["nowhere: in no layer of tests/test_layers.py's LAYERS"]
    # Downward imports, the package's own names, the CLI package's own modules and other packages pass.
    assert check("score", "from .answer import split_answer\nfrom .korean import Rouge1\nimport json\n") == []
    assert check("doctor", "from . import __version__, backend\n") == []
    assert check("cli._options", "from .. import console\nfrom . import _other\nfrom toolkit.cli import main\n") == []
    assert check("__main__", "from .cli import main\n") == []


# Run in a fresh interpreter: it imports the package alone (its __init__ loads llama_cpp, as any
# `import toolkit.x` does first), then forks a child per module, a few at a time, so that each
# module is imported with no other toolkit module loaded without paying that start in each one.
_IMPORT_EACH = r"""
import importlib, os, sys, traceback
import toolkit
loaded = [m for m in sys.modules if m.startswith("toolkit.")]
assert not loaded, f"importing the package imports {loaded}: the children would not start clean"
running = {}

def reap():
    pid, status = os.wait()
    name = running.pop(pid)
    if status:
        print(f"FAILED {name}: exit status {os.waitstatus_to_exitcode(status)}", flush=True)

for name in sys.argv[1:]:
    if len(running) >= max(2, os.cpu_count() or 1):
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            sys.stderr.write(f"--- {name}\n{traceback.format_exc()}")
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    running[pid] = name
while running:
    reap()
"""


def import_each(names: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_each_module_imports_alone():
    """Each module with no other toolkit module imported before it: an import cycle, or a name
    taken from a module that only some other import order loads, fails here. (__main__ is left
    out: importing it runs the command line.)"""
    names = sorted(f"toolkit.{m}" for m in package_modules() if m not in ("__init__", "__main__"))
    start = time.perf_counter()
    r = import_each(names)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    print(f"{len(names)} modules imported alone in {time.perf_counter() - start:.1f} s")


def test_a_module_that_fails_to_import_is_named():
    r = import_each(["toolkit.errors", "toolkit.no_such_module", "toolkit.versions"])
    assert r.stdout.strip() == "FAILED toolkit.no_such_module: exit status 1", r.stdout
    assert "--- toolkit.no_such_module" in r.stderr and "ModuleNotFoundError" in r.stderr
