"""Command-line entries for the server: `serve` and `policies check`."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Server commands are added by the server module."""
