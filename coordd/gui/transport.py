"""The gui transport: click the agent's chat input, paste the message, press the submit key.

Every step runs on the one GUI thread (coordd.gui.owner), whichever gui agent it
is for. A message is pasted under a header line made from the `gui.header`
template. With `coalesce`, the messages queued for an agent go out in one paste
(bounded by count and bytes, counted before joining), each still recorded as
delivered on its own.

A paste is one submit (see coordd.transports): pasted into a terminal whose
program has not asked for bracketed paste, each newline is an Enter. Nothing
tells coordd what the window runs, so the agent's `multiline` decides: "join"
(one line, each newline shown as " ⏎ "), "paste" (as it is: an IDE chat input
takes a pasted newline as text), or "keys" (each line pasted, the newline_key
pressed between two). Unset, it is "join" for an agent whose submit key is Enter,
else "paste": where Enter does not submit, a pasted newline does not either.

A display that is missing or gone, or the pyautogui fail-safe, raises
TransportDown: the messages stay queued and go out once the probe finds the
display usable again.
"""

from __future__ import annotations

from coordd.config import DEFAULT_SEQUENCE, ClickStep, Gui, GuiAgent, HotkeyStep, PasteStep, SubmitStep, WaitStep
from coordd.gui.owner import OWNER, PasteNotTaken, settle
from coordd.transports import DeliveryError, Record, Transport, TransportDown, header_fields, input_lines, one_line

SEPARATOR = "\n\n"  # between coalesced messages in one paste


def render(m: Record, header: str) -> str:
    """One message as pasted: the header line (if the template is not empty), then the body."""
    if not header:
        return m.body
    return f"{header.format(**header_fields(m))}\n{m.body}"


def coalesce(texts: list[str], max_bytes: int) -> list[tuple[int, str]]:
    """Consecutive texts joined into pastes of at most max_bytes (a longer text goes alone): (count, text)."""
    groups: list[tuple[int, str]] = []
    size = 0
    for text in texts:
        n = len(text.encode("utf-8"))
        if groups and size + len(SEPARATOR) + n <= max_bytes:
            count, joined = groups[-1]
            groups[-1] = (count + 1, joined + SEPARATOR + text)
            size += len(SEPARATOR) + n
        else:
            groups.append((1, text))
            size = n
    return groups


class GuiTransport(Transport):
    name = "gui"
    exclusive = "gui"  # one mouse, one keyboard, one clipboard

    def __init__(self, agent: GuiAgent, settings: Gui) -> None:
        self.agent = agent
        self.settings = settings  # the config's [gui]: shared by every gui agent
        self.max_batch = agent.coalesce_max_messages if agent.coalesce else 1
        # Loading the config checked that x and y are set, and onboarding_x/_y both or neither.
        assert agent.x is not None and agent.y is not None, f"gui agent {agent.id} has no x, y"
        self.chat_at = (agent.x, agent.y)  # the chat input's screen position
        self.onboarding_at = (
            (agent.onboarding_x, agent.onboarding_y)
            if agent.onboarding_x is not None and agent.onboarding_y is not None
            else self.chat_at
        )
        self.where = f"({agent.x}, {agent.y})"
        self.multiline = agent.multiline or ("join" if agent.submit_key == "enter" else "paste")
        self._keys_ok = False
        self._started = False

    async def start(self) -> None:
        OWNER.users += 1
        self._started = True
        await OWNER.start(self.settings)

    async def close(self) -> None:
        if self._started:
            self._started = False
            OWNER.users -= 1
            if OWNER.users == 0:
                OWNER.close()

    def health(self) -> str | None:
        return OWNER.health(self.settings)

    async def deliver(self, messages: list[Record]) -> None:
        header = self.settings.header if self.agent.header is None else self.agent.header
        texts = [render(m, header) for m in messages]
        groups = coalesce(texts, self.agent.coalesce_max_bytes) if self.agent.coalesce else [(1, t) for t in texts]
        urgent = messages[0].priority == "urgent"  # a batch never mixes priorities
        await OWNER.run(self._deliver, groups, urgent)

    async def onboard(self, message: str | None) -> int:
        """Run the agent's onboarding sequence; returns the number of steps run."""
        text = message if message is not None else self.settings.onboarding_message.format(agent=self.agent.id)
        return await OWNER.run(self._onboard, text)

    # --- on the GUI thread ----------------------------------------------------------------------

    def _deliver(self, groups: list[tuple[int, str]], urgent: bool) -> None:
        a = self.agent
        pag = self._ready()
        submit = a.urgent_submit_key if urgent else a.submit_key
        done = 0
        with self._clipboard_restored():
            for count, text in groups:
                try:
                    OWNER.click(pag, *self.chat_at, a.click_settle_ms)
                    self._put(pag, text)
                    OWNER.hotkey(pag, submit)
                    settle(a.submit_settle_ms)
                except PasteNotTaken as e:
                    raise DeliveryError(str(e), delivered=done) from None
                except Exception as e:
                    reason = OWNER.trouble(e) if done else None  # with none out yet, the job reports it as down
                    if reason is None:
                        raise
                    raise TransportDown(reason, delivered=done) from None  # the first `done` did go out
                done += count

    def _onboard(self, text: str) -> int:
        a = self.agent
        pag = self._ready()
        steps = self.settings.sequences.get(a.onboarding, DEFAULT_SEQUENCE)
        with self._clipboard_restored():
            for step in steps:
                match step:
                    case ClickStep(at="chat"):
                        OWNER.click(pag, *self.chat_at, a.click_settle_ms)
                    case ClickStep():
                        OWNER.click(pag, *self.onboarding_at, a.click_settle_ms)
                    case HotkeyStep():
                        OWNER.hotkey(pag, step.keys)
                    case PasteStep():
                        self._put(pag, step.text.format(message=text, agent=a.id))
                    case SubmitStep():
                        OWNER.hotkey(pag, a.urgent_submit_key if step.urgent else a.submit_key)
                        settle(a.submit_settle_ms)
                    case WaitStep():
                        settle(step.ms)
        return len(steps)

    def _put(self, pag, text: str) -> None:
        """Paste text as one input (one submit follows), as `multiline` says."""
        a = self.agent
        if self.multiline == "keys":
            for n, line in enumerate(input_lines(text)):
                if n:
                    OWNER.hotkey(pag, a.newline_key)
                if line:
                    OWNER.paste(pag, line, a.paste_hotkey, self.settings, a.paste_settle_ms, self.where)
            return
        text = one_line(text) if self.multiline == "join" else text
        OWNER.paste(pag, text, a.paste_hotkey, self.settings, a.paste_settle_ms, self.where)

    def _ready(self):
        pag = OWNER.ready(self.settings)
        if not self._keys_ok:  # pyautogui ignores unknown key names silently: refuse them instead
            a = self.agent
            steps = self.settings.sequences.get(a.onboarding, [])
            combos = [
                ("paste_hotkey", a.paste_hotkey),
                ("submit_key", a.submit_key),
                ("urgent_submit_key", a.urgent_submit_key),
                ("newline_key", a.newline_key),
            ]
            combos += [(f"gui.sequences.{a.onboarding}.keys", s.keys) for s in steps if isinstance(s, HotkeyStep)]
            for key, combo in combos:
                bad = [k for k in combo.split("+") if not pag.isValidKey(k)]
                if bad:
                    raise DeliveryError(
                        f"agent {a.id}: `{key}` = {combo!r}: pyautogui has no key {bad[0]!r} (see pyautogui.KEY_NAMES)"
                    )
            self._keys_ok = True
        return pag

    def _clipboard_restored(self):
        return OWNER.restoring_clipboard(self.settings.restore_clipboard)


async def pointer() -> tuple[int, int, int, int]:
    """The mouse position and screen size, read on the GUI thread: (x, y, width, height)."""
    return await OWNER.run(OWNER.pointer)


__all__ = ["GuiTransport", "TransportDown", "coalesce", "pointer", "render"]
