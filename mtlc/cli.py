"""The `mtlc` command line: thin commands, each calling one function of the package.

Commands are loaded lazily (by import path) so that `mtlc --help` imports neither
torch nor any command's dependencies.
"""

from __future__ import annotations

import importlib

import click

from mtlc.clitools import allow_import_option

# name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "build": "mtlc.commands:build",
    "schema": "mtlc.commands:schema",
    "list": "mtlc.commands:list_names",
    "train": "mtlc.train.command:train",
    "eval": "mtlc.train.command:evaluate",
    "sweep": "mtlc.train.command:sweep",
    "compare": "mtlc.train.command:compare",
    "profile": "mtlc.profile.command:profile",
    "viz": "mtlc.viz.command:viz",
    "diff": "mtlc.viz.command:diff",
    "export": "mtlc.export.command:export",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtlc")
@allow_import_option
def main(allow_import: tuple[str, ...]) -> None:
    """mtlc: compile a multi-task learning spec into a model, draw it, cost it, train it."""


if __name__ == "__main__":
    main()
