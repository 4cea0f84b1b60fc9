"""The GUI's part of the config: the [gui] section, the gui agent, coordinates from gui.coords_file, the checks.

coordd.config makes these part of the Config and calls `apply_gui` while it loads
one. Key names are checked for shape here; whether pyautogui knows a key is
checked once it is loaded (it needs a display), when the first delivery runs.
"""

# No `from __future__ import annotations`: msgspec would evaluate each string annotation when it builds the
# config's decoder, 8 M instructions of the daemon's start (perf/README.md).
import os
import re
from typing import Any, Literal

import msgspec

from coordd.model import ConfigError


class _Step(msgspec.Struct, tag_field="do", forbid_unknown_fields=True, kw_only=True):
    """One step of a GUI onboarding sequence."""


class ClickStep(_Step, tag="click"):
    at: Literal["onboarding", "chat"] = "onboarding"  # onboarding_x/_y (x/y when unset), or x/y


class HotkeyStep(_Step, tag="hotkey"):
    keys: str  # "ctrl+n", "enter"


class PasteStep(_Step, tag="paste"):
    text: str = "{message}"  # {message}: the onboarding message; {agent}: the agent's id


class SubmitStep(_Step, tag="submit"):
    urgent: bool = False  # press urgent_submit_key instead of submit_key


class WaitStep(_Step, tag="wait"):
    ms: int


Step = ClickStep | HotkeyStep | PasteStep | SubmitStep | WaitStep
DEFAULT_SEQUENCE: list[Step] = [ClickStep(), PasteStep(), SubmitStep()]


class Gui(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Settings shared by every gui agent: one mouse, one keyboard, one clipboard."""

    pause_ms: int = 0  # pyautogui.PAUSE: its pause after every call (its own default is 100 ms)
    failsafe: bool = True  # pyautogui's fail-safe: the mouse in a screen corner pauses GUI delivery
    header: str = "[A2A] {sender} -> {to} | {PRIORITY}{about}"
    restore_clipboard: bool = True
    confirm_paste: bool = True  # wait until the application fetched the pasted text
    paste_timeout_ms: int = 2000
    coords_file: str = ""
    onboarding_message: str = "You are {agent}. Messages from the other agents arrive in this chat."
    sequences: dict[str, list[Step]] = {}


class GuiAgent(msgspec.Struct, tag="gui", tag_field="transport", forbid_unknown_fields=True, kw_only=True):
    """An agent reached by clicking its chat input and pasting (an IDE chat window).

    Coordinates are screen pixels (negative x: a monitor left of the primary); x and y
    may come from gui.coords_file instead. Delays are what the target application
    needs between steps; see config.example.toml for what each is for. What all gui
    agents share (pyautogui's pause, the header, the clipboard policy) is the [gui] section.
    """

    id: str  # the fields every agent has (coordd.config's other agents share them)
    groups: list[str] = []
    x: int | None = None
    y: int | None = None
    onboarding_x: int | None = None
    onboarding_y: int | None = None
    paste_hotkey: str = "ctrl+v"
    submit_key: str = "enter"
    urgent_submit_key: str = "ctrl+enter"
    click_settle_ms: int = 10
    paste_settle_ms: int = 10
    submit_settle_ms: int = 10
    onboarding: str = "default"  # a sequence name from [gui.sequences], or "default"
    header: str | None = None  # this agent's header template; unset: gui.header
    coalesce: bool = False
    coalesce_max_messages: int = 10
    coalesce_max_bytes: int = 16384
    multiline: str | None = None  # "join" | "paste" | "keys"; unset: "join" when submit_key is "enter", else "paste"
    newline_key: str = "shift+enter"  # multiline = "keys": starts a new line in the input without submitting


HEADER_FIELDS = {
    "sender": "Agent-2",
    "to": "Agent-1",
    "kind": "message",
    "priority": "urgent",
    "PRIORITY": "URGENT",
    "id": 1,
    "tags": "a,b",
    "subject": "review 41",
    "reply_to": 7,
    "about": " | re: #7 | review 41",  # what is set of " | re: #ID" and " | SUBJECT"; empty when neither is
}
KEYS = re.compile(r"^[^+\sA-Z]+(\+[^+\sA-Z]+)*\Z")  # "ctrl+shift+v", "enter", "f5"


def apply_gui(cfg: Any, source: str) -> None:
    """cfg: the coordd.config.Config being loaded from source."""
    if cfg.gui.coords_file:
        _merge_coords_file(cfg, source)
    g = cfg.gui
    _template(source, "gui.header", g.header, HEADER_FIELDS)
    _template(source, "gui.onboarding_message", g.onboarding_message, {"agent": "Agent-1"})
    _at_least(source, "gui.pause_ms", g.pause_ms, 0)
    _at_least(source, "gui.paste_timeout_ms", g.paste_timeout_ms, 1)
    for name, steps in g.sequences.items():
        for i, step in enumerate(steps):
            where = f"gui.sequences.{name}[{i}]"
            if isinstance(step, HotkeyStep):
                _keys(source, f"{where}.keys", step.keys)
            elif isinstance(step, WaitStep):
                _at_least(source, f"{where}.ms", step.ms, 0)
            elif isinstance(step, PasteStep):
                _template(source, f"{where}.text", step.text, {"agent": "Agent-1", "message": "hi"})
    for i, a in enumerate(cfg.agents):
        if isinstance(a, GuiAgent):
            _check_agent(cfg, source, f"agents[{i}]", a)


def _merge_coords_file(cfg: Any, source: str) -> None:
    path = os.path.expanduser(cfg.gui.coords_file)
    if not os.path.isabs(path) and os.path.isfile(source):
        path = os.path.join(os.path.dirname(os.path.abspath(source)), path)  # relative to the config file
    from coordctl import coords  # json and dataclasses: only for a config that has a coords_file

    try:
        entries = coords.load(path)
    except coords.CoordsError as e:
        raise ConfigError(f"{source}: `gui.coords_file`: {e}") from None
    configured = {a.id: a for a in cfg.agents}
    for c in entries:
        a = configured.get(c.id)
        if a is None and c.active:  # an active agent of the file that the config does not list
            cfg.agents.append(GuiAgent(id=c.id, x=c.x, y=c.y, onboarding_x=c.onboarding_x, onboarding_y=c.onboarding_y))
        elif isinstance(a, GuiAgent):  # listed: the config's own values win
            if a.x is None and a.y is None:
                a.x, a.y = c.x, c.y
            if a.onboarding_x is None and a.onboarding_y is None:
                a.onboarding_x, a.onboarding_y = c.onboarding_x, c.onboarding_y


def _check_agent(cfg: Any, src: str, where: str, a: GuiAgent) -> None:
    if a.x is None or a.y is None:
        raise ConfigError(
            f"{src}: `{where}` ({a.id}): a gui agent needs both `x` and `y` (the chat input's screen "
            "position; `coordctl coords capture` reads it), or an entry in `gui.coords_file`"
        )
    if (a.onboarding_x is None) != (a.onboarding_y is None):
        raise ConfigError(f"{src}: `{where}` ({a.id}): set both `onboarding_x` and `onboarding_y`, or neither")
    for key in ("paste_hotkey", "submit_key", "urgent_submit_key", "newline_key"):
        _keys(src, f"{where}.{key}", getattr(a, key))
    for key in ("click_settle_ms", "paste_settle_ms", "submit_settle_ms"):
        _at_least(src, f"{where}.{key}", getattr(a, key), 0)
    if a.header is not None:
        _template(src, f"{where}.header", a.header, HEADER_FIELDS)
    _at_least(src, f"{where}.coalesce_max_messages", a.coalesce_max_messages, 1)
    _at_least(src, f"{where}.coalesce_max_bytes", a.coalesce_max_bytes, 1)
    if a.onboarding != "default" and a.onboarding not in cfg.gui.sequences:
        names = ", ".join(["default", *cfg.gui.sequences])
        raise ConfigError(
            f"{src}: `{where}.onboarding` = {a.onboarding!r}: no such sequence in [gui.sequences]; known: {names}"
        )


def _keys(src: str, key: str, value: str) -> None:
    if not KEYS.match(value):
        raise ConfigError(
            f"{src}: `{key}` = {value!r} is not a key combination: write key names joined by '+', "
            'lower case, e.g. "ctrl+shift+v" or "enter"'
        )


def _at_least(src: str, key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{src}: `{key}` must be {low} or more, got {value}")


def _template(src: str, key: str, template: str, fields: dict) -> None:
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        known = ", ".join("{" + f + "}" for f in fields)
        raise ConfigError(f"{src}: `{key}` = {template!r} is not a valid template ({e!r}); fields: {known}") from None
