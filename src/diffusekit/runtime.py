"""Process-wide runtime settings for the command line (torch threads), chosen once at start-up."""

from __future__ import annotations


def configure_threads() -> None:
    """Set torch's thread count and wait policy for this process (first cut: leave torch's defaults)."""
