"""coordd: one long-running daemon that queues messages durably and delivers them to agents in order."""

__version__ = "0.1.0"
