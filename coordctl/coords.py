"""The coordinates file of the tool coordd replaces, read into gui agent settings.

Its shape: ``{"agents": {"Agent-1": {"chat_input_coordinates": [x, y],
"onboarding_input_coords": [x, y], "active": true, "description": "..."}}}``.
Used by ``coordctl agents import-coords`` (prints TOML) and by coordd's
``gui.coords_file`` key; stdlib only, so the client stays light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class CoordsError(Exception):
    pass


@dataclass
class AgentCoords:
    id: str
    x: int
    y: int
    onboarding_x: int | None = None
    onboarding_y: int | None = None
    active: bool = True
    description: str | None = None


def _point(value: object, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise CoordsError(f"{where} must be [x, y] with two integers, got {value!r}")
    return value[0], value[1]


def load(path: str) -> list[AgentCoords]:
    """Every agent in the file, in file order; errors name the file and the key."""
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
    except OSError as e:
        raise CoordsError(f"cannot read coordinates file {path}: {e.strerror}") from None
    except ValueError as e:
        raise CoordsError(f"{path}: not valid JSON: {e}") from None
    agents = raw.get("agents") if isinstance(raw, dict) else None
    if not isinstance(agents, dict):
        raise CoordsError(f'{path}: expected {{"agents": {{"<id>": {{"chat_input_coordinates": [x, y], ...}}}}}}')
    out = []
    for agent_id, entry in agents.items():
        where = f"{path}: agents.{agent_id}"
        if not isinstance(entry, dict):
            raise CoordsError(f"{where} must be an object")
        x, y = _point(entry.get("chat_input_coordinates"), f"{where}.chat_input_coordinates")
        c = AgentCoords(id=agent_id, x=x, y=y, active=entry.get("active", True) is not False)
        if entry.get("onboarding_input_coords") is not None:
            c.onboarding_x, c.onboarding_y = _point(
                entry["onboarding_input_coords"], f"{where}.onboarding_input_coords"
            )
        if isinstance(entry.get("description"), str):
            c.description = entry["description"]
        out.append(c)
    return out


def _quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def agent_toml(c: AgentCoords) -> str:
    """One [[agents]] table for a gui agent at these coordinates."""
    lines = ["[[agents]]", f"id = {_quote(c.id)}", 'transport = "gui"']
    if c.description:
        lines[0] += "  # " + " ".join(c.description.split())
    lines += [f"x = {c.x}", f"y = {c.y}"]
    if c.onboarding_x is not None:
        lines += [f"onboarding_x = {c.onboarding_x}", f"onboarding_y = {c.onboarding_y}"]
    return "\n".join(lines) + "\n"


def to_toml(agents: list[AgentCoords]) -> str:
    """The [[agents]] tables of the active agents (inactive ones are skipped)."""
    return "\n".join(agent_toml(c) for c in agents if c.active)
