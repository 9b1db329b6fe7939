"""``recordkit-train``: the training command line (commands arrive with the training issue)."""

from __future__ import annotations

import click

from recordkit import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recordkit-train")
def main() -> None:
    """Distributed fp16 ResNet training on recordkit shards.

    No training commands are available in this version yet: run, eval, predict, export and
    demo are planned (see README, "Status").
    """
