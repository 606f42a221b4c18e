"""The command-line options that name the model, shared by `score` and `eval`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.engine.local import LocalEngine


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--config`, or `--base` and `--adapter` (and `--adapter-subfolder`)."""
    source = parser.add_argument_group("model (a config file, or --base and --adapter)")
    source.add_argument("--config", help="a gateway config file")
    source.add_argument("--base", help="base model: hub id or local folder")
    source.add_argument("--adapter", help="uncertainty adapter: hub id or local folder")
    source.add_argument("--adapter-subfolder", default=None, help="the adapter's subfolder")


def load_engine(args: argparse.Namespace) -> LocalEngine:
    """The local engine the options name: explicit paths win over the config."""
    from gateway.engine.factory import load_local_engine

    return load_local_engine(
        config=Path(args.config) if args.config else None,
        base=args.base,
        adapter=args.adapter,
        adapter_subfolder=args.adapter_subfolder,
    )
