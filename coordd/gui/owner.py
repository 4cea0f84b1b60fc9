"""The one thread that drives the mouse, the keyboard and the clipboard, for every gui agent.

All GUI work of the daemon (deliveries to every gui agent, onboarding, pointer
queries) runs as jobs on one single-thread executor, one job at a time, so two
agents' pastes never interleave and pyautogui (not thread-safe) is only ever
called from this thread. The event loop awaits the jobs; other transports keep
flowing meanwhile.

pyautogui is imported here, on first use, in this thread: it opens an X
connection at import, so it needs a DISPLAY. When the X server goes away (or was
never reachable) the owner is *down* with a reason; `health()` then schedules a
probe that reconnects: pyautogui's X module is reloaded (it keeps its display
connection and keycode table in module globals) and the clipboard thread is
restarted on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from coordd.config import Gui
from coordd.model import DeliveryError, TransportDown

if TYPE_CHECKING:  # imported at run time on the GUI thread only: it needs Xlib
    from coordd.gui.clipboard import Clipboard

log = logging.getLogger("coordd.gui")

NOT_STARTED = "the GUI thread has not connected to the display yet"
FAILSAFE_REASON = "pyautogui fail-safe: the mouse is in a screen corner; move it away to resume GUI delivery"
PyAutoGui = Any  # the pyautogui module: it has no type information


class Down(Exception):
    """Raised in the GUI thread: the display cannot be used now (the reason says why)."""


class GuiOwner:
    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.down: str | None = NOT_STARTED
        self.pag: PyAutoGui | None = None  # the pyautogui module, once imported
        self.clipboard: Clipboard | None = None  # set while the X connections are open (not broken)
        self.broken = True  # the X connections must be (re)opened before the next use
        self.users = 0  # started gui transports; the last one to close closes the owner
        self._probe: Future | None = None

    # --- the event loop's side ------------------------------------------------------------

    async def run(self, fn, *args):
        """Run fn(*args) on the GUI thread. X trouble becomes TransportDown (nothing counted as an attempt)."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordd-gui")
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._job, fn, args)

    async def start(self, settings: Gui) -> None:
        """Connect now, so that `status` shows a missing display from the start."""
        if self.pag is None or self.down:
            with contextlib.suppress(TransportDown):  # the reason is in self.down; the daemon starts anyway
                await self.run(self._check, settings)

    def health(self, settings: Gui) -> str | None:
        """The last known state; while down, a probe runs in the background to bring it back."""
        if self.down and (self._probe is None or self._probe.done()):
            if self.executor is None:
                self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordd-gui")
            self._probe = self.executor.submit(self._job, self._check, (settings,))
            self._probe.add_done_callback(lambda f: f.exception())  # its outcome is in self.down
        return self.down

    def close(self) -> None:
        if self.executor is not None:
            self.executor.submit(self._hand_over_clipboard)
            self.executor.submit(self._disconnect)
            self.executor.shutdown(wait=True)
            self.executor = None
        self.down, self.broken, self._probe = NOT_STARTED, True, None

    # --- the GUI thread -------------------------------------------------------------------------

    def _job(self, fn, args):
        try:
            return fn(*args)
        except DeliveryError:
            raise
        except Exception as e:
            reason = self.trouble(e)
            if reason is None:
                raise
            raise TransportDown(reason) from None

    def trouble(self, e: Exception) -> str | None:
        """If e means the display cannot be used now, mark the owner down and return why; else None."""
        from Xlib import error as xerror

        from coordd.gui.clipboard import ClipboardDead

        if isinstance(e, Down):
            self.down = str(e)
        elif isinstance(e, (ClipboardDead, xerror.ConnectionClosedError, xerror.DisplayError, OSError)):
            self.broken = True
            self.down = f"X display {os.environ.get('DISPLAY')} is gone: {e}"
            log.warning("%s", self.down)
        elif self.pag is not None and isinstance(e, self.pag.FailSafeException):
            self.down = FAILSAFE_REASON
            log.warning("%s", FAILSAFE_REASON)
        elif not self._server_answers():
            # python3-xlib turns some dead-socket errors into a TypeError of its own: ask the server itself.
            self.broken = True
            self.down = f"X display {os.environ.get('DISPLAY')} is gone ({type(e).__name__} while talking to it)"
            log.warning("%s", self.down)
        else:
            return None
        return self.down

    def _server_answers(self) -> bool:
        from coordd.gui.clipboard import open_display

        try:
            open_display(os.environ.get("DISPLAY")).close()
            return True
        except Exception:
            return False

    @contextlib.contextmanager
    def restoring_clipboard(self, enabled: bool):
        """Put the clipboard's text back as it was once the block is done (if enabled)."""
        if not enabled:
            yield
            return
        clip = self._open_clipboard()
        previous = clip.read()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a display gone mid-job: nothing left to restore to
                if previous is None:
                    clip.release()
                else:
                    clip.own(previous)

    def _open_clipboard(self) -> Clipboard:
        """The clipboard of a job, which has called ready() first: that opened it (or raised Down)."""
        assert self.clipboard is not None, "a GUI job uses the clipboard before ready()"
        return self.clipboard

    def ready(self, settings: Gui) -> PyAutoGui:
        """pyautogui, set up for a job; raises Down when the display is not usable."""
        pag = self.pag
        if self.broken or pag is None:
            pag = self._connect()
        pag.PAUSE = settings.pause_ms / 1000
        pag.FAILSAFE = settings.failsafe
        return pag

    def _check(self, settings: Gui) -> None:
        """The probe: connect if needed, and see that the fail-safe is not engaged."""
        pag = self.ready(settings)
        if pag.FAILSAFE and tuple(pag.position()) in pag.FAILSAFE_POINTS:
            raise Down(FAILSAFE_REASON)
        if self.down and self.down != NOT_STARTED:
            log.info("GUI delivery resumes (it was down: %s)", self.down)
        self.down = None

    def _connect(self) -> PyAutoGui:
        """Open the X connections; the pyautogui module."""
        name = os.environ.get("DISPLAY")
        if not name:
            raise Down(
                "no DISPLAY: start coordd in the graphical session, or pass DISPLAY (and XAUTHORITY) "
                "to it, e.g. `systemctl --user import-environment DISPLAY XAUTHORITY`"
            )
        self._disconnect()
        from coordd.gui.clipboard import Clipboard

        try:
            # pyautogui and mouseinfo print python-xlib's xauth warnings on stdout: keep them out.
            with contextlib.redirect_stdout(io.StringIO()):
                pag = self.pag
                if pag is None:
                    t = time.perf_counter()
                    import pyautogui

                    pag = self.pag = pyautogui
                    log.info("pyautogui loaded in %.0f ms", (time.perf_counter() - t) * 1000)
                else:
                    importlib.reload(sys.modules["pyautogui._pyautogui_x11"])  # a new display connection
            self.clipboard = Clipboard(name)
        except Exception as e:  # Xlib raises several types for "cannot connect"; all mean the same here
            from Xlib.error import XauthError

            if isinstance(e, XauthError):
                raise Down(
                    f"cannot open X display {name}: no X authority file ({e}); set XAUTHORITY to the "
                    "session's authority file"
                ) from None
            raise Down(f"cannot open X display {name}: {e}") from None
        self.broken = False
        return pag

    def _hand_over_clipboard(self) -> None:
        """At stop: the text we serve as the restored clipboard would vanish with us; xclip keeps it."""
        clip = self.clipboard
        if clip is None or clip.dead or not clip.owned or not clip.content or shutil.which("xclip") is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["xclip", "-selection", "clipboard", "-i"],
                input=clip.content,
                timeout=5,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _disconnect(self) -> None:
        if self.clipboard is not None:
            self.clipboard.close()
            self.clipboard = None
        x11 = sys.modules.get("pyautogui._pyautogui_x11")
        if x11 is not None and self.broken:
            with contextlib.suppress(Exception):
                x11._display.close()

    # --- GUI steps, used by the transport's jobs -------------------------------------------------------

    def click(self, pag, x: int, y: int, settle_ms: int) -> None:
        pag.click(x, y)
        settle(settle_ms)

    def hotkey(self, pag, keys: str) -> None:
        pag.hotkey(*keys.split("+"))

    def paste(self, pag, text: str, paste_keys: str, settings: Gui, settle_ms: int, where: str) -> None:
        """Put text on the clipboard, press the paste keys, and wait until the application fetched it."""
        clip = self._open_clipboard()
        clip.own(text.encode("utf-8"))
        mark = clip.mark()
        self.hotkey(pag, paste_keys)
        if settings.confirm_paste:
            outcome = clip.wait_fetched(mark, settings.paste_timeout_ms / 1000)
            if outcome == "timeout":
                raise PasteNotTaken(
                    f"no application fetched the pasted text within {settings.paste_timeout_ms} ms after "
                    f"{paste_keys} at {where}: check that the chat input is there and that {paste_keys} pastes in it"
                )
            if outcome == "lost":
                log.debug("another client took the clipboard during a paste; not confirmed")
        settle(settle_ms)

    def pointer(self) -> tuple[int, int, int, int]:
        """Where the mouse is, and the screen size: (x, y, width, height). Needs no pyautogui."""
        from coordd.gui.clipboard import open_display

        name = os.environ.get("DISPLAY")
        if not name:
            raise Down("no DISPLAY in coordd's environment: cannot read the mouse position")
        try:
            d = open_display(name)
        except Exception as e:
            raise Down(f"cannot open X display {name}: {e}") from None
        try:
            screen = d.screen()
            p = screen.root.query_pointer()
            return p.root_x, p.root_y, screen.width_in_pixels, screen.height_in_pixels
        finally:
            d.close()


class PasteNotTaken(Exception):
    """The paste keys went out but no application asked for the clipboard: a delivery failure."""


def settle(ms: int) -> None:
    if ms > 0:
        time.sleep(ms / 1000)  # noqa: sleep-ok: a configured settle delay the target application needs


OWNER = GuiOwner()  # the one owner of the mouse, keyboard and clipboard in this process
