"""coordd: one long-running daemon that queues messages durably and delivers them to agents in order."""

from coordctl import __version__  # defined once, in coordctl

__all__ = ["__version__"]
