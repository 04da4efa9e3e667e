"""One rule splits the named errors: the user can fix it → UserError, exit 2; we failed → InternalError, exit 1."""

import ast
import inspect
from pathlib import Path

from toolkit import errors
from toolkit.errors import InternalError, ToolkitError, UserError

TOOLKIT = Path(errors.__file__).parent


def named_errors():
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, ToolkitError) and c not in (ToolkitError, UserError, InternalError)]


def test_every_named_error_is_either_the_users_to_fix_or_ours():
    assert len(named_errors()) > 20
    for cls in named_errors():
        assert issubclass(cls, UserError) != issubclass(cls, InternalError), cls
        assert cls.exit_code == (2 if issubclass(cls, UserError) else 1), cls


def test_the_split_follows_what_the_user_can_do():
    # Fixable by the user: input, requests, the disk. Ours: tools, builds, llama.cpp failing.
    for cls in (errors.InvalidInput, errors.OutputExists, errors.OutOfMemory, errors.DiskFull, errors.NotProvisioned,
                errors.UnknownQuantType, errors.ModelNotFound, errors.OutputBusy):
        assert issubclass(cls, UserError), cls
    for cls in (errors.ConversionFailed, errors.QuantizationFailed, errors.LoadFailed, errors.DecodeFailed):
        assert issubclass(cls, InternalError), cls


def raised_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            names.add(node.exc.func.id)
    return names


def test_the_common_base_is_never_raised():
    offenders = [str(p.relative_to(TOOLKIT)) for p in TOOLKIT.rglob("*.py")
                 if "ToolkitError" in raised_names(ast.parse(p.read_text(encoding="utf-8")))]
    assert offenders == []
    # The check itself sees such a raise.
    assert "ToolkitError" in raised_names(ast.parse("def f():\n    raise ToolkitError('x')\n"))


def test_the_cli_maps_each_kind_to_its_code(monkeypatch, capsys):
    from toolkit import cli, inspection

    for error, code in ((errors.InvalidGGUF("x.gguf: not a GGUF file"), 2), (errors.LoadFailed("llama.cpp failed"), 1),
                        (InternalError("the build finished but produced no llama-imatrix"), 1)):
        monkeypatch.setattr(inspection, "summary", lambda path, e=error: (_ for _ in ()).throw(e))
        assert cli.main(["inspect", "x.gguf"]) == code
        assert capsys.readouterr().err == f"error: {error}\n"
