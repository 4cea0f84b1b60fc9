"""Configuration: TOML in, typed structs out. Every key is documented in config.example.toml.

Unknown keys and bad values are errors that name the key: msgspec's validation
errors carry the path (``$.agents[2].inbox_dir``), which ConfigError keeps.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal, Union

import msgspec

from coordctl.paths import runtime_socket_path

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(Exception):
    pass


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Daemon(_Section):
    socket: str = ""  # default: $XDG_RUNTIME_DIR/coordd/coordd.sock
    workspace: str = ""  # root of the default inbox dirs; default $XDG_DATA_HOME/coordd
    max_frame_bytes: int = 1 << 20
    max_connections: int = 256
    wait_timeout_s: float = 30.0  # default for send(wait=true) without a timeout
    shutdown_grace_ms: int = 5000  # how long deliveries in progress may finish at stop
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_uids: list[int] = []  # peers allowed besides the daemon's own uid
    allow_gids: list[int] = []


class Store(_Section):
    path: str = ""  # default: $XDG_STATE_HOME/coordd/coordd.db
    synchronous: Literal["normal", "full"] = "normal"


class Retention(_Section):
    max_messages: int = 100_000
    max_age_days: float = 7.0
    prune_interval_s: float = 60.0
    prune_chunk: int = 500


class Queue(_Section):
    max_per_agent: int = 10_000
    max_total: int = 100_000


class Delivery(_Section):
    max_attempts: int = 5
    backoff_initial_ms: int = 500
    backoff_max_ms: int = 60_000
    unhealthy_recheck_ms: int = 1000  # how often a down transport is probed again


class _Agent(msgspec.Struct, tag_field="transport", forbid_unknown_fields=True, kw_only=True):
    id: str
    groups: list[str] = []


class InboxAgent(_Agent, tag="inbox"):
    inbox_dir: str = ""  # default: <workspace>/agent_workspaces/<id>/inbox
    fsync: bool = False  # fsync each file before the rename (power-loss safe, slower)
    chunk: int = 64  # messages written per trip to the file-writing thread


Agent = Union[InboxAgent]


class Config(_Section):
    daemon: Daemon = msgspec.field(default_factory=Daemon)
    store: Store = msgspec.field(default_factory=Store)
    retention: Retention = msgspec.field(default_factory=Retention)
    queue: Queue = msgspec.field(default_factory=Queue)
    delivery: Delivery = msgspec.field(default_factory=Delivery)
    agents: list[Agent] = []


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def embedded_default() -> dict:
    """What `coordd run` serves with no config: eight inbox agents."""
    return {"agents": [{"id": f"Agent-{n}", "transport": "inbox"} for n in range(1, 9)]}


def parse(raw: dict, source: str) -> Config:
    for agent in raw.get("agents", []) if isinstance(raw.get("agents"), list) else []:
        if isinstance(agent, dict):
            agent.setdefault("transport", "inbox")
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None
    _fill_defaults(cfg)
    _validate(cfg, source)
    return cfg


def load(path: str | None) -> Config:
    """Load the config at path (or $COORDD_CONFIG); with neither, the embedded default."""
    path = path or os.environ.get("COORDD_CONFIG")
    if not path:
        return parse(embedded_default(), "<embedded default>")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse(raw, path)


def _fill_defaults(cfg: Config) -> None:
    d = cfg.daemon
    d.socket = d.socket or runtime_socket_path()
    d.workspace = d.workspace or str(_xdg("XDG_DATA_HOME", ".local/share") / "coordd")
    cfg.store.path = cfg.store.path or str(_xdg("XDG_STATE_HOME", ".local/state") / "coordd" / "coordd.db")
    for a in cfg.agents:
        if isinstance(a, InboxAgent) and not a.inbox_dir:
            a.inbox_dir = str(Path(d.workspace) / "agent_workspaces" / a.id / "inbox")


def _positive(source: str, key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{source}: `{key}` must be greater than 0, got {value}")


def _validate(cfg: Config, src: str) -> None:
    for key, value in [
        ("daemon.max_frame_bytes", cfg.daemon.max_frame_bytes),
        ("daemon.max_connections", cfg.daemon.max_connections),
        ("daemon.wait_timeout_s", cfg.daemon.wait_timeout_s),
        ("retention.max_messages", cfg.retention.max_messages),
        ("retention.max_age_days", cfg.retention.max_age_days),
        ("retention.prune_interval_s", cfg.retention.prune_interval_s),
        ("retention.prune_chunk", cfg.retention.prune_chunk),
        ("queue.max_per_agent", cfg.queue.max_per_agent),
        ("queue.max_total", cfg.queue.max_total),
        ("delivery.max_attempts", cfg.delivery.max_attempts),
        ("delivery.backoff_initial_ms", cfg.delivery.backoff_initial_ms),
        ("delivery.backoff_max_ms", cfg.delivery.backoff_max_ms),
        ("delivery.unhealthy_recheck_ms", cfg.delivery.unhealthy_recheck_ms),
    ]:
        _positive(src, key, value)
    if cfg.daemon.shutdown_grace_ms < 0:
        raise ConfigError(f"{src}: `daemon.shutdown_grace_ms` must be 0 or more")
    seen: set[str] = set()
    for i, a in enumerate(cfg.agents):
        if not AGENT_ID.match(a.id):
            raise ConfigError(
                f"{src}: `agents[{i}].id` = {a.id!r} is not a valid agent id: use 1-64 letters, digits, "
                "'_', '.', '-', starting with a letter or digit"
            )
        if a.id in seen:
            raise ConfigError(f"{src}: `agents[{i}].id` = {a.id!r} is configured twice")
        seen.add(a.id)
        for g in a.groups:
            if not AGENT_ID.match(g):
                raise ConfigError(f"{src}: `agents[{i}].groups` has invalid group name {g!r}")
        if isinstance(a, InboxAgent):
            _positive(src, f"agents[{i}].chunk", a.chunk)
    if not cfg.agents:
        raise ConfigError(f"{src}: no agents configured: add at least one [[agents]] table")
