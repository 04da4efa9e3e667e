"""Command line on typer: parse options, build the settings, call the library, print; named
errors become one line on stderr and an exit code here, in one place.

Exit codes: 0 done; 2 what the user can fix (bad input, a bad option, a full disk); 1 what we
failed at; 130 Ctrl-C. `-v` (anywhere) adds the traceback."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from .. import __version__, console
from ..errors import DiskFull, ToolkitError
from ..fsutil import NO_SPACE_ERRNOS
from ..quantizer import QUANT_TYPES
from . import machine, quantize, infer, score  # noqa: F401, I001  (each registers its commands, in help order)
from ._options import COMMANDS

app = typer.Typer(
    name="toolkit", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Quantize Korean LLMs with llama.cpp and answer AI 말평 language-norm questions.")

for _name, _function, _settings in COMMANDS:
    app.command(_name, **_settings)(_function)


def _version(value: bool) -> None:
    if value:
        print(f"toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def toolkit(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                          help="show tracebacks on errors (before or after the command)")] = False,
) -> None:
    """Quantize Korean LLMs with llama.cpp and answer AI 말평 language-norm questions."""


def _prepare(argv: list[str]) -> tuple[list[str], bool]:
    """-v anywhere (`toolkit infer … -v` as well as `toolkit -v infer …`); any llama.cpp type as a
    flag of its own, in any case (--Q6_K, --iq4_xs): typer sees --type for those it lists no flag for."""
    verbose, prepared = False, []
    for i, a in enumerate(argv):
        if a == "--":
            prepared += argv[i:]
            break
        if a in ("-v", "--verbose"):
            verbose = True
        elif a.startswith("--") and a[2:].upper() in QUANT_TYPES:
            name = a[2:].upper()
            prepared += [a.lower()] if name in quantize.FLAG_TYPES else ["--type", name]
        else:
            prepared.append(a)
    return prepared, verbose


def _usage(e: typer.TyperException) -> str:
    """A usage error in one line: `--parallel: must be at least 1`."""
    param = getattr(e, "param", None)
    if type(e) is typer.BadParameter and param is not None:  # not its subclass MissingParameter
        name = max(param.opts, key=len) if param.param_type_name == "option" else param.human_readable_name
        return f"{name}: {e.message.removeprefix('Value error, ')}"  # pydantic's prefix on a choice
    return e.format_message()


def main(argv: list[str] | None = None) -> int:
    args, verbose = _prepare(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(app)
    if "_TOOLKIT_COMPLETE" in os.environ:  # shell completion: typer's own entry point answers it
        return command.main(args, prog_name="toolkit")
    try:
        with command.make_context("toolkit", args) as ctx:
            return command.invoke(ctx) or 0
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except typer.TyperException as e:  # usage: a bad option, a missing argument
        console.error(_usage(e))
        return getattr(e, "exit_code", 2)
    except ToolkitError as e:
        if verbose:
            traceback.print_exc()
        console.error(str(e))
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        console.err.print(console.labelled("interrupted:", "red", "finished work is kept and nothing half-written "
                                                                  "is left; rerun to go on"))
        return 130
    except Exception as e:  # an internal failure: one line unless -v
        if verbose:
            traceback.print_exc()
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:  # the machine's disk, not a bug of ours
            where = f" writing {e.filename}" if e.filename else ""
            console.error(f"no space left on the device{where}; free some space and rerun (finished work is kept, "
                          "nothing half-written is left)")
            return DiskFull.exit_code
        console.error(f"{type(e).__name__}: {e} (rerun with -v for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
