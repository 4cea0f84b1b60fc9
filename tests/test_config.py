"""Config: the example documents every key, defaults, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from coordd import config

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def test_example_parses_and_documents_every_key():
    raw = tomllib.loads(EXAMPLE.read_text())
    config.parse(tomllib.loads(EXAMPLE.read_text()), str(EXAMPLE))
    for section in ("daemon", "store", "retention", "queue", "delivery", "gui", "metrics"):
        struct = type(getattr(config.Config(), section))
        keys = {f.name for f in msgspec.structs.fields(struct)}
        assert keys == set(raw[section]), f"[{section}] in config.example.toml differs from the code"
    documented: dict[str, set[str]] = {}  # keys shown per transport
    for a in raw["agents"]:
        documented.setdefault(a.get("transport", "inbox"), set()).update(set(a) - {"transport"})
    assert documented["inbox"] == {f.name for f in msgspec.structs.fields(config.InboxAgent)}
    assert documented["tmux"] == {f.name for f in msgspec.structs.fields(config.TmuxAgent)}
    assert documented["gui"] == {f.name for f in msgspec.structs.fields(config.GuiAgent)}
    assert documented["discard"] == {f.name for f in msgspec.structs.fields(config.DiscardAgent)}
    # [cluster] is shown commented out (with it, coordd would connect to NATS): the block after "#[cluster]".
    lines = EXAMPLE.read_text().split("#[cluster]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cluster = tomllib.loads("\n".join(line.removeprefix("#") for line in lines))
    assert set(cluster) == {f.name for f in msgspec.structs.fields(config.Cluster)}
    assert config.Cluster(**cluster) == config.Cluster()  # the defaults shown are the code's


def test_embedded_default_is_eight_inbox_agents(monkeypatch, tmp_path):
    monkeypatch.delenv("COORDD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    cfg = config.load(None)
    assert [a.id for a in cfg.agents] == [f"Agent-{n}" for n in range(1, 9)]
    assert cfg.daemon.socket == str(tmp_path / "run" / "coordd" / "coordd.sock")
    assert cfg.store.path == str(tmp_path / "state" / "coordd" / "coordd.db")
    assert cfg.agents[0].inbox_dir == str(tmp_path / "data" / "coordd" / "agent_workspaces" / "Agent-1" / "inbox")


@pytest.mark.parametrize(
    "text, key",
    [
        ("[daemon]\nsockett = '/x'\n", "sockett"),
        ("[store]\nsynchronous = 'sometimes'\n", "$.store.synchronous"),
        ("[queue]\nmax_total = 0\n", "queue.max_total"),
        ("[queue]\nmax_bytes = 1000\n", "queue.max_bytes"),
        ("[[agents]]\nid = 'A'\n[[agents]]\nid = 'A'\n", "agents[1].id"),
        ("[[agents]]\nid = 'A'\ngroups = ['bad group']\n", "agents[0].groups"),
        ("[[agents]]\nid = 'A'\ntransport = 'pigeon'\n", "transport"),
        ("[daemon\n", "invalid TOML"),
        # A name ends at its last character: `$` would have let one trailing newline through.
        ("[[agents]]\nid = 'A'\ntransport = 'tmux'\ntarget = \"s:0.1\\n\"\n", "agents[0].target"),
        (
            "[[agents]]\nid = 'A'\ntransport = 'tmux'\ntarget = 's'\nmultiline = 'keys'\nnewline_key = \"C-j\\n\"\n",
            "agents[0].newline_key",
        ),
        ("[[agents]]\nid = 'A'\ntransport = 'gui'\nx = 1\ny = 2\nsubmit_key = \"enter\\n\"\n", "submit_key"),
        # [cluster]: a node name is one NATS subject token; credentials and TLS keys go in pairs
        ("[cluster]\nnode = 'a.b'\n[[agents]]\nid = 'A'\n", "cluster.node"),
        ("[cluster]\nnats = 'localhost:4222'\n[[agents]]\nid = 'A'\n", "cluster.nats"),
        ("[cluster]\nuser = 'u'\n[[agents]]\nid = 'A'\n", "`password`"),
        ("[cluster]\nreplicas = 7\n[[agents]]\nid = 'A'\n", "cluster.replicas"),
        ("[cluster]\ncreds = '/nonexistent.creds'\n[[agents]]\nid = 'A'\n", "cluster.creds"),
        ("[[agents]]\nid = 'A'\ntransport = 'remote'\nnode = 'n'\n", "configure the agent on its own node"),
    ],
)
def test_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert key in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(str(tmp_path / "nope.toml"))


def test_gui_agent_without_the_gui_extra_says_what_to_install(tmp_path):
    """pyautogui and Xlib are the `gui` extra: a config with a gui agent names the command that installs them.
    Their absence is made real for the subprocess with sys.modules[name] = None, Python's import blocker."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[agents]]\nid = "A"\ntransport = "gui"\nx = 1\ny = 2\n[[agents]]\nid = "B"\n')
    hide = "import sys; sys.modules['pyautogui'] = sys.modules['Xlib'] = None; from coordd.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", hide, "check-config", str(cfg)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "pyautogui and python3-xlib" in out.stderr and "pip install 'coordd[gui]'" in out.stderr, out.stderr
    cfg.write_text('[[agents]]\nid = "B"\n')  # inbox agents need neither
    out = subprocess.run([sys.executable, "-c", hide, "check-config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "text, hint",
    [
        ("[daemon]\nsockett = '/x'\n", "did you mean `socket`?"),
        ("[[agents]]\nid = 'A'\ntransport = 'tmux'\ntraget = 's'\n", "did you mean `target`?"),
        ("[delivery]\nmax_atempts = 3\n", "did you mean `max_attempts`?"),
    ],
)
def test_a_mistyped_key_gets_the_closest_known_one(tmp_path, text, hint):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert str(e.value).endswith(hint)
    path.write_text("[daemon]\nfrobnicate = 1\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert "did you mean" not in str(e.value)  # nothing close: no guess


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_coordd_help(flag):
    shown = subprocess.run([sys.executable, "-m", "coordd", flag], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "coordd [OPTIONS] COMMAND" in shown.stdout and "check-config" in shown.stdout
