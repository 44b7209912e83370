"""CLI commands: sim (registered on :data:`mrepo.cli.main`)."""

from __future__ import annotations

from . import main  # noqa: F401  (commands below use @main.command())
