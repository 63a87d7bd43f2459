"""What every command shares: `--set`, clean error reporting, the consoles.

Kept free of torch so that importing the CLI (and `mtlc --help`) stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
