"""`d3pm`: train, evaluate and sample discrete diffusion models; prepare data; draw figures.

Every sub-command lives in its own module exposing `register(subparsers)`, which sets `func`.
A user error (bad config, missing file, corrupt checkpoint, a path that cannot be read or
written) is one line on stderr, `d3pm: error: ...`, and exit code 2. An OSError that names no
path is not a user error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from discrete_diffusion import progress
from discrete_diffusion.extras import explain
from discrete_diffusion.files import CACHE_ENV, PathError, writable_folder

COMMANDS = ("train", "eval", "sample", "data", "figures", "demo")
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError, IsADirectoryError,
               FileExistsError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3pm", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", metavar="DIR",
                        help=f"data cache folder (default ${CACHE_ENV} or "
                             f"~/.cache/discrete_diffusion)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"discrete_diffusion.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a module that is there but broken must say so
                raise
            continue
        module.register(subparsers)
    return parser


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (KeyError's repr quotes dropped; an OSError raised by
    the system as "PATH: reason")."""
    if isinstance(err, OSError) and not isinstance(err, PathError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
        if err.filename2 is not None:
            text += f" (moving to {err.filename2})"
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__


def missing_package(err: ModuleNotFoundError) -> int:
    """One line naming the extra that installs a missing optional package (exit 2); any other
    missing module is a bug and propagates."""
    missing = explain(err, "d3pm")
    if missing is None:
        raise err
    print(f"d3pm: error: {one_line(missing)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run `d3pm` with `argv` (default sys.argv[1:]); returns the exit code."""
    try:
        parser = build_parser()
    except ModuleNotFoundError as err:  # the commands need the `train` extra
        return missing_package(err)
    args = parser.parse_args(argv)
    progress.configure(enabled=not getattr(args, "no_progress", False))
    try:
        if args.cache:
            os.environ[CACHE_ENV] = str(writable_folder(args.cache))
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"d3pm: error: {one_line(err)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional package imported outside `require`
        return missing_package(err)
    except OSError as err:
        if err.filename is None and not isinstance(err, PathError):
            raise  # no path to name: a fault of the program, not of the user's input
        print(f"d3pm: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("d3pm: interrupted", file=sys.stderr)
        return 130
    finally:  # in-process callers (tests, notebooks) get the default back
        progress.configure(enabled=True)


if __name__ == "__main__":
    sys.exit(main())
