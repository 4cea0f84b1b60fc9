"""Configuration: TOML in, typed structs out. Every key is documented in config.example.toml.

Unknown keys and bad values are errors that name the key: msgspec's validation
errors carry the path (``$.agents[2].inbox_dir``), which ConfigError keeps.
"""

# No `from __future__ import annotations`: msgspec would evaluate each string annotation when it builds the
# config's decoder, 8 M instructions of the daemon's start (perf/README.md).
import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from coordctl.paths import runtime_socket_path

# The [gui] section and the gui agent are defined with the rest of the GUI; they are part of the config as well.
from coordd.gui.config import (  # noqa: F401
    DEFAULT_SEQUENCE,
    HEADER_FIELDS,  # a header template's fields with sample values: tmux headers have the same
    ClickStep,
    Gui,
    GuiAgent,
    HotkeyStep,
    PasteStep,
    Step,
    SubmitStep,
    WaitStep,
    apply_gui,
)
from coordd.model import ConfigError

# Also group names and tmux socket names. \Z, not $: $ would let a trailing newline through.
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


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
    idle_timeout_s: float = 600.0  # close a connection with nothing in flight and no traffic this long; 0: never
    frame_timeout_s: float = 10.0  # close a connection whose frame, once begun, is not whole this long after; 0: never
    max_write_buffer_bytes: int = 1 << 20  # replies buffered for a client; past it, its requests wait until it reads
    control_chars: Literal["allow", "reject"] = "allow"  # in message bodies (tab and newline always allowed)


class Store(_Section):
    path: str = ""  # default: $XDG_STATE_HOME/coordd/coordd.db
    synchronous: Literal["normal", "full"] = "normal"


class Retention(_Section):
    max_messages: int = 100_000
    max_age_days: float = 7.0
    prune_interval_s: float = 60.0
    prune_chunk: int = 500
    inbox_max_age_days: float = 30.0  # an inbox agent's message files older than this are removed; 0: no bound
    inbox_max_files: int = 1000  # per inbox agent, the newest kept; 0: no bound


class Queue(_Section):
    max_per_agent: int = 10_000
    max_total: int = 100_000
    max_bytes: int = 256 << 20  # memory the bodies of undelivered messages may hold, in all


class Delivery(_Section):
    max_attempts: int = 5
    backoff_initial_ms: int = 500
    backoff_max_ms: int = 60_000
    unhealthy_recheck_ms: int = 1000  # a down transport is tried again after this, doubling at each try...
    unhealthy_recheck_max_ms: int = 30_000  # ...up to this
    bounce: bool = True  # a failed or cancelled message's sending agent gets a notice (coordd.bounces)


class Pull(_Section):
    lease_s: float = 300.0  # a pull agent's fetch leases a message this long; unacked by then, it is fetched again


class Metrics(_Section):
    listen: str = ""  # "host:port" of the Prometheus HTTP endpoint; "": none (`coordctl metrics` still works)
    allow_remote: bool = False  # allow a listen address that is not loopback
    watch_buffer: int = 1000  # events held per watcher that falls behind; past it they are counted as missed


class Http(_Section):
    listen: str = ""  # "host:port" of the dashboard and its HTTP API (docs/dashboard.md); "": none
    allow_remote: bool = False  # allow a listen address that is not loopback


class Cluster(_Section):
    """[cluster]: this daemon is one node of several that forward to each other through NATS JetStream
    (docs/cluster.md). Absent: a single node, and nats-py is never imported."""

    nats: str | list[str] = "nats://127.0.0.1:4222"  # one server URL, or several of one NATS cluster
    node: str = ""  # this node's name, unique in the cluster; default: the host name
    stream: str = "COORDD"  # the JetStream stream that carries the nodes' messages and receipts
    creds: str = ""  # a NATS credentials file (.creds); or user and password
    user: str = ""
    password: str = ""
    tls_ca: str = ""  # PEM files; tls_cert and tls_key: this node's client certificate
    tls_cert: str = ""
    tls_key: str = ""
    replicas: int = 1  # copies JetStream keeps of the stream and the directory: 3 on a cluster of three servers
    heartbeat_s: float = 2.0  # how often this node refreshes its agents in the directory and reads the others'
    dedupe_window_s: float = 120.0  # JetStream drops a message whose Nats-Msg-Id it stored this recently


# How a message sent to "@NAME" picks the member of group NAME that gets it (coordd.groups).
PICKS = {
    "round-robin": "each member in turn",
    "least-loaded": "the member with the fewest unacknowledged messages",
    "idle": "a member its transport reports idle, else the least loaded",
}


class Group(_Section):
    pick: str = "round-robin"  # one of PICKS (checked by _validate, whose error lists them)


class _Agent(msgspec.Struct, tag_field="transport", forbid_unknown_fields=True, kw_only=True):
    id: str
    groups: list[str] = []


class InboxAgent(_Agent, tag="inbox"):
    inbox_dir: str = ""  # default: <workspace>/agent_workspaces/<id>/inbox
    fsync: bool = False  # fsync each file before the rename (power-loss safe, slower)
    chunk: int = 16  # files written per call of the writer thread (agents take turns)
    file_mode: str = "0600"  # octal; e.g. "0640" to let the group read a shared workspace


class TmuxAgent(_Agent, tag="tmux"):
    """An agent in a tmux pane: its text is pasted (bracketed paste), then Enter submits it."""

    target: str  # "session:window.pane" or a pane id "%3"
    socket_name: str = ""  # tmux -L; with neither socket key, tmux's default server
    socket_path: str = ""  # tmux -S
    header: str = "[A2A] {sender} -> {to} | {PRIORITY}{about}"  # first line of the pasted text; "" for none
    enter_delay_ms: int = 5  # between the paste and the Enter key
    submit_check: bool = True  # after Enter, confirm the text left the input line
    submit_timeout_ms: int = 1000
    idle_quiet_ms: int = 0  # deliver once the pane's screen has not changed for this long; 0: off
    idle_prompt: str = ""  # deliver once the cursor's line matches this regex; "": off
    idle_max_wait_ms: int = 30_000
    idle_timeout: Literal["deliver", "fail"] = "deliver"  # what happens when the pane is not idle in time
    deliver_to_shell: bool = False  # paste even when the pane's foreground program is a shell (see tmux.py)
    multiline: str = "join"  # how a text of several lines goes in as one input: "join" | "paste" | "keys"
    newline_key: str = "C-j"  # multiline = "keys": the tmux key that starts a new line without submitting


class DiscardAgent(_Agent, tag="discard"):
    """For benchmarks and soak tests only: every message counts as delivered at once and goes nowhere."""

    chunk: int = 256  # messages taken per delivery call


class PullAgent(_Agent, tag="pull"):
    """Nothing is pushed: the agent fetches its messages with the inbox request, each under a lease ([pull])."""


class RemoteAgent(_Agent, tag="remote"):
    """An agent of another node of the cluster, learned from the directory (coordd.cluster.directory), never
    configured: its messages are forwarded to `node` through NATS."""

    node: str
    refused: bool = False  # configured here too, but `node` held it first: this node refuses its own
    health: str | None = None  # why it is down on its node, as its node's last heartbeat said; None: healthy


Agent = InboxAgent | GuiAgent | TmuxAgent | DiscardAgent | PullAgent | RemoteAgent


class Config(_Section):
    daemon: Daemon = msgspec.field(default_factory=Daemon)
    store: Store = msgspec.field(default_factory=Store)
    retention: Retention = msgspec.field(default_factory=Retention)
    queue: Queue = msgspec.field(default_factory=Queue)
    delivery: Delivery = msgspec.field(default_factory=Delivery)
    pull: Pull = msgspec.field(default_factory=Pull)
    gui: Gui = msgspec.field(default_factory=Gui)
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    http: Http = msgspec.field(default_factory=Http)
    cluster: Cluster | None = None  # [cluster]: None, a single node
    groups: dict[str, Group] = {}  # [groups.NAME]: settings of a group its members join (agents' `groups`)
    agents: list[Agent] = []


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def default_path() -> Path:
    """Where `coordd init` writes a config and `coordd run` looks for one: $XDG_CONFIG_HOME/coordd/coordd.toml."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "coordd" / "coordd.toml"


def default_config() -> str | None:
    """The config at default_path(), if there is one (else coordd runs with the embedded default)."""
    path = default_path()
    return str(path) if path.exists() else None


def embedded_default() -> dict:
    """What `coordd run` serves with no config: eight inbox agents."""
    return {"agents": [{"id": f"Agent-{n}", "transport": "inbox"} for n in range(1, 9)]}


def _did_you_mean(error: str) -> str:
    """For an unknown key, the known key closest to it (from any section: typos rarely cross sections)."""
    found = re.match(r"Object contains unknown field `([^`]*)`", error)
    if found is None:
        return ""
    import difflib  # only to word an error

    close = difflib.get_close_matches(found[1], _known_keys(Config), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def _known_keys(struct: type) -> set[str]:
    keys = set()
    for field in msgspec.structs.fields(struct):
        keys.add(field.encode_name)
        for t in (field.type, *getattr(field.type, "__args__", ())):  # a list's item, a union's members
            for inner in (t, *getattr(t, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                    keys |= _known_keys(inner)
    return keys


def parse(raw: dict, source: str) -> Config:
    for agent in raw.get("agents", []) if isinstance(raw.get("agents"), list) else []:
        if isinstance(agent, dict):
            agent.setdefault("transport", "inbox")
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}{_did_you_mean(str(e))}") from None
    _fill_defaults(cfg)
    if cfg.gui.coords_file or any(isinstance(a, GuiAgent) for a in cfg.agents):
        apply_gui(cfg, source)  # coordinates from gui.coords_file, gui checks
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
    if cfg.cluster is not None:
        cfg.cluster.node = cfg.cluster.node or socket.gethostname().split(".")[0]
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
        ("queue.max_bytes", cfg.queue.max_bytes),
        ("delivery.max_attempts", cfg.delivery.max_attempts),
        ("delivery.backoff_initial_ms", cfg.delivery.backoff_initial_ms),
        ("delivery.backoff_max_ms", cfg.delivery.backoff_max_ms),
        ("delivery.unhealthy_recheck_ms", cfg.delivery.unhealthy_recheck_ms),
        ("delivery.unhealthy_recheck_max_ms", cfg.delivery.unhealthy_recheck_max_ms),
    ]:
        _positive(src, key, value)
    for key in ("inbox_max_age_days", "inbox_max_files"):
        if not 0 <= getattr(cfg.retention, key) < float("inf"):
            raise ConfigError(f"{src}: `retention.{key}` must be 0 (no bound) or more")
    if cfg.daemon.shutdown_grace_ms < 0:
        raise ConfigError(f"{src}: `daemon.shutdown_grace_ms` must be 0 or more")
    for key in ("idle_timeout_s", "frame_timeout_s"):
        if not 0 <= getattr(cfg.daemon, key) < float("inf"):
            raise ConfigError(f"{src}: `daemon.{key}` must be 0 (never) or a number of seconds")
    _positive(src, "daemon.max_write_buffer_bytes", cfg.daemon.max_write_buffer_bytes)
    if cfg.queue.max_bytes < cfg.daemon.max_frame_bytes:
        raise ConfigError(
            f"{src}: `queue.max_bytes` ({cfg.queue.max_bytes}) is less than `daemon.max_frame_bytes` "
            f"({cfg.daemon.max_frame_bytes}): a message as large as a frame allows could never be queued; "
            "raise queue.max_bytes or lower daemon.max_frame_bytes"
        )
    _positive(src, "metrics.watch_buffer", cfg.metrics.watch_buffer)
    if not 0 < cfg.pull.lease_s < float("inf"):  # also refuses nan
        raise ConfigError(f"{src}: `pull.lease_s` must be a number of seconds greater than 0, got {cfg.pull.lease_s}")
    if cfg.metrics.listen:
        _validate_listen(src, "metrics", cfg.metrics.listen, cfg.metrics.allow_remote)
    if cfg.http.listen:
        _validate_listen(src, "http", cfg.http.listen, cfg.http.allow_remote)
        _require_extra(src, "http.listen", "aiohttp", "dashboard")
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
                hint = f': write {g[1:]!r}, sends name it "@{g[1:]}"' if g.startswith("@") else ""
                raise ConfigError(f"{src}: `agents[{i}].groups` has invalid group name {g!r}{hint}")
        if isinstance(a, RemoteAgent):
            raise ConfigError(
                f'{src}: `agents[{i}].transport` = "remote": agents of other nodes are learned from the cluster '
                "directory, not configured: configure the agent on its own node"
            )
        if isinstance(a, (InboxAgent, DiscardAgent)):
            _positive(src, f"agents[{i}].chunk", a.chunk)
        if isinstance(a, InboxAgent):
            _validate_file_mode(src, f"agents[{i}]", a.file_mode)
        elif isinstance(a, TmuxAgent):
            _validate_tmux(src, f"agents[{i}]", a)
        elif isinstance(a, GuiAgent):
            _require_gui_extra(src, f"agents[{i}]")
            if a.multiline is not None:
                check_multiline(src, f"agents[{i}].multiline", a.multiline)
    if cfg.cluster is not None:
        _validate_cluster(src, cfg.cluster)
    if not cfg.agents:
        raise ConfigError(f"{src}: no agents configured: add at least one [[agents]] table")
    joined = {g for a in cfg.agents for g in a.groups}
    for name, group in cfg.groups.items():
        if group.pick not in PICKS:
            choices = "; ".join(f'"{pick}" ({what})' for pick, what in PICKS.items())
            raise ConfigError(f"{src}: `groups.{name}.pick` = {group.pick!r}: use {choices}")
        if name not in joined:
            raise ConfigError(
                f"{src}: `groups.{name}`: no agent joins group {name!r}: add it to an agent's `groups`, "
                "or remove the table (a misspelt group name?)"
            )


# A node name is one NATS subject token: no '.', '*', '>' or space.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _validate_cluster(src: str, cl: Cluster) -> None:
    if not NODE_NAME.match(cl.node):
        raise ConfigError(
            f"{src}: `cluster.node` = {cl.node!r} is not a node name: use 1-64 letters, digits, '_', '-' "
            "(it is a NATS subject token: no '.', '*', '>' or spaces)"
        )
    if not STREAM_NAME.match(cl.stream):
        raise ConfigError(f"{src}: `cluster.stream` = {cl.stream!r}: use 1-64 letters, digits, '_', '-'")
    urls = [cl.nats] if isinstance(cl.nats, str) else cl.nats
    if not urls:
        raise ConfigError(f'{src}: `cluster.nats` is empty: give a server URL, e.g. "nats://127.0.0.1:4222"')
    for url in urls:
        if not re.fullmatch(r"(nats|tls|ws|wss)://[^\s/]+", url):
            raise ConfigError(f'{src}: `cluster.nats` has {url!r}: use a URL such as "nats://host:4222"')
    if cl.creds and (cl.user or cl.password):
        raise ConfigError(f"{src}: `cluster`: set `creds` or `user` and `password`, not both")
    if bool(cl.user) != bool(cl.password):
        raise ConfigError(f"{src}: `cluster`: `user` and `password` go together: set both or neither")
    if bool(cl.tls_cert) != bool(cl.tls_key):
        raise ConfigError(f"{src}: `cluster`: `tls_cert` and `tls_key` go together: set both or neither")
    for key in ("creds", "tls_ca", "tls_cert", "tls_key"):
        path = getattr(cl, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{src}: `cluster.{key}` = {path!r} is not a readable file")
    _positive(src, "cluster.heartbeat_s", cl.heartbeat_s)
    if not 1 <= cl.replicas <= 5:
        raise ConfigError(f"{src}: `cluster.replicas` must be 1 to 5 (JetStream's limit), got {cl.replicas}")
    _positive(src, "cluster.dedupe_window_s", cl.dedupe_window_s)
    if not _importable("nats"):
        raise ConfigError(f"{src}: [cluster] needs nats-py: install it with `pip install 'coordd[cluster]'`")


# What the gui transport imports (the `gui` extra); inbox and tmux agents need neither.
GUI_MODULES = {"pyautogui": "pyautogui", "Xlib": "python3-xlib"}


def _require_gui_extra(src: str, where: str) -> None:
    missing = [dist for module, dist in GUI_MODULES.items() if not _importable(module)]
    if missing:
        raise ConfigError(
            f'{src}: `{where}` uses transport = "gui", which needs {" and ".join(missing)}: '
            "install them with `pip install 'coordd[gui]'`"
        )


def _importable(module: str) -> bool:
    import importlib.util  # only for a gui agent

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked by sys.modules[module] = None
        return False


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; an IPv6 address in brackets: "[::1]:9464". ValueError if neither."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not listen.startswith("[")) or not port.isdigit() or int(port) > 65535:
        raise ValueError(listen)
    return host, int(port)


LISTEN_EXAMPLE = {"metrics": 9464, "http": 8765}  # the port an error's example names


def _validate_listen(src: str, section: str, listen: str, allow_remote: bool) -> None:
    key, port = f"{section}.listen", LISTEN_EXAMPLE[section]
    try:
        host, _ = split_listen(listen)
    except ValueError:
        raise ConfigError(
            f'{src}: `{key}` = {listen!r} is not host:port: use e.g. "127.0.0.1:{port}" '
            f'("[::1]:{port}" for IPv6; port 0: any free port)'
        ) from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigError(
            f"{src}: `{key}` = {listen!r} is not a loopback address: it names your agents "
            "and shows their traffic, so it stays on this machine unless you set "
            f"`{section}.allow_remote = true` (or use 127.0.0.1)"
        )


def _require_extra(src: str, key: str, module: str, extra: str) -> None:
    if not _importable(module):
        raise ConfigError(f"{src}: `{key}` needs {module}: install it with `pip install 'coordd[{extra}]'`")


MULTILINE = {
    "join": 'one line, each newline shown as " \u23ce "',
    "paste": "the text as it is, one paste",
    "keys": "each line, then newline_key between them",
}


def check_multiline(src: str, key: str, value: str) -> None:
    """The `multiline` of a tmux or gui agent: a clear error that lists the choices."""
    if value not in MULTILINE:
        choices = "; ".join(f'"{name}" ({what})' for name, what in MULTILINE.items())
        raise ConfigError(f"{src}: `{key}` = {value!r}: use {choices}")


# tmux key names send-keys knows (`C-`, `M-`, `S-` for ctrl, meta, shift), or one printable character. An
# unknown name would be typed as text, and a leading '-' read as an option, so neither is accepted.
TMUX_KEY = re.compile(
    r"^([CMS]-)*(Enter|Escape|Tab|BTab|Space|BSpace|IC|DC|Home|End|NPage|PPage|PageUp|PageDown"
    r"|PgUp|PgDn|Up|Down|Left|Right|F[1-9]|F1[0-2]|[!-~])\Z"
)


def _validate_file_mode(src: str, where: str, mode: str) -> None:
    """An inbox file's mode: the owner reads and writes; the group may read and write, others only read.
    No execute or special bits, and never writable by others: they could rewrite the messages."""
    if not re.fullmatch(r"0?[0-7]{3}", mode) or int(mode, 8) & ~0o664 or int(mode, 8) & 0o600 != 0o600:
        raise ConfigError(
            f"{src}: `{where}.file_mode` = {mode!r} is not a mode for inbox files: use an octal string "
            'from "0600" (the default: the owner only) to "0664", e.g. "0640" to let the group '
            "read; owner read and write, no execute bits, never writable by others"
        )


# A tmux target: `%N`, or `session[:window[.pane]]`; never a leading '-', so never read as an option.
TMUX_TARGET = re.compile(r"^(%\d+|(\$\d+|=?\w[\w+-]*)(:(@\d+|=?\w[\w+-]*)(\.(\d+|%\d+))?)?)\Z", re.ASCII)


def _validate_tmux(src: str, where: str, a: TmuxAgent) -> None:
    if not TMUX_TARGET.match(a.target) or len(a.target) > 200:
        raise ConfigError(
            f"{src}: `{where}.target` = {a.target!r} is not a tmux pane target: use "
            "session:window.pane (letters, digits, '_', '-', '+'; '=' for exact) or a pane id like %3"
        )
    if a.socket_name and a.socket_path:
        raise ConfigError(f"{src}: `{where}`: set `socket_name` (tmux -L) or `socket_path` (tmux -S), not both")
    if a.socket_name and not AGENT_ID.match(a.socket_name):
        raise ConfigError(f"{src}: `{where}.socket_name` = {a.socket_name!r}: use letters, digits, '_', '.', '-'")
    if a.socket_path and not os.path.isabs(a.socket_path):
        raise ConfigError(f"{src}: `{where}.socket_path` = {a.socket_path!r} must be an absolute path")
    try:
        a.header.format(**HEADER_FIELDS)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"{src}: `{where}.header` = {a.header!r}: {e!r}; fields: {', '.join('{' + k + '}' for k in HEADER_FIELDS)}"
        ) from None
    try:
        re.compile(a.idle_prompt)
    except re.error as e:
        raise ConfigError(f"{src}: `{where}.idle_prompt` = {a.idle_prompt!r} is not a regex: {e}") from None
    for key in ("enter_delay_ms", "idle_quiet_ms"):
        if getattr(a, key) < 0:
            raise ConfigError(f"{src}: `{where}.{key}` must be 0 or more")
    for key in ("submit_timeout_ms", "idle_max_wait_ms"):
        _positive(src, f"{where}.{key}", getattr(a, key))
    check_multiline(src, f"{where}.multiline", a.multiline)
    if not TMUX_KEY.match(a.newline_key) or a.newline_key.startswith("-"):
        raise ConfigError(
            f"{src}: `{where}.newline_key` = {a.newline_key!r} is not a tmux key name: use e.g. "
            '"C-j", "M-Enter" or "S-Enter" (see KEY BINDINGS in tmux(1))'
        )
