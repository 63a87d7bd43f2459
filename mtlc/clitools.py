"""What every command shares: `--set`, clean error reporting, the consoles.

Kept free of torch so that importing the CLI (and `mtlc --help`) stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mtlc.errors import MtlcError

if TYPE_CHECKING:
    from rich.console import Console


def _allow_imports(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple:
    if value:
        from mtlc.imports import allow_import

        ctx.with_resource(allow_import(value))  # for the rest of this command
    return value


allow_import_option = click.option(
    "--allow-import",
    "allow_import",
    multiple=True,
    metavar="MODULE",
    callback=_allow_imports,
    help="Allow the spec to import MODULE: a `callable` data set, an `import:` backbone (repeatable).",
)


def set_option(fn: Callable) -> Callable:
    """`--set key.path=value`, repeatable, on every command that reads a spec."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec value by dotted path, e.g. --set train.epochs=2 (repeatable).",
    )(fn)


def guarded(fn: Callable) -> Callable:
    """Report an MtlcError as one line on stderr with its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MtlcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def console(stderr: bool = False) -> Console:
    """A rich console (imported lazily: rich is not needed for --help)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Exit with a one-line error for problems found by the command itself."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exit_without_teardown(command: Callable[[], Any]) -> NoReturn:
    """Run ``command``, then end the process with its exit status, skipping teardown.

    For the processes of a torchrun job. After a rank has left its process group, the
    interpreter's own exit still destroys the C++ objects torch.distributed left behind
    (gloo's threads, the store's connection) and can abort there (SIGABRT, "terminate
    called without an active exception", with no Python frame on the stack): torchrun
    then reports a job that finished and wrote everything as failed. Everything mtlc
    writes is closed before the command returns (checkpoints, summary, event files), so
    ``os._exit`` after flushing the two streams loses nothing. Exit codes are kept: the
    command's ``sys.exit`` status, 1 with the traceback for an uncaught exception (130 for
    Ctrl-C, the status mtlc's own interrupted runs exit with).
    """
    code = 0
    try:
        command()
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # Ctrl-C outside the paths that stop a run cleanly
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to keep
                stream.flush()
    os._exit(code)
