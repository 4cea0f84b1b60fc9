"""Conventions the code keeps that no linter knows: every sleep says why it is not synchronisation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLEEP = re.compile(r"\bsleep" + re.escape("("))  # time.sleep(...), asyncio.sleep(...) (built so as not to match itself)


def test_every_sleep_says_why_it_is_not_synchronisation():
    """Waiting is on an event, or a poll with a deadline; a sleep is only a poll interval, a configured delay or a
    yield to the loop, and says which in a `# noqa: sleep-ok: why` comment on its line."""
    unmarked = []
    for path in sorted([*ROOT.glob("coordd/**/*.py"), *ROOT.glob("coordctl/*.py"), *ROOT.glob("tests/*.py")]):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if SLEEP.search(code) and "# noqa: sleep-ok: " not in line:
                unmarked.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not unmarked, "sleeps without a `# noqa: sleep-ok: why` comment:\n" + "\n".join(unmarked)
