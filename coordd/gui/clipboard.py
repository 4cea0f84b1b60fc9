"""The X CLIPBOARD, owned by coordd itself: set, read back, and told when a paste took it.

pyautogui has no clipboard, and pyperclip/xclip fork a process per call and
cannot say when the target application actually fetched the text. Here one
thread of the daemon owns the CLIPBOARD selection on a private X connection and
answers every SelectionRequest itself, so the GUI thread

- takes ownership synchronously (the server has processed it before the paste key goes out),
- learns when the application fetched the data (`wait_fetched`), so the submit key never
  overtakes the paste, and
- restores the previous text by simply serving it again afterwards.

Texts larger than one X request go out in INCR chunks (ICCCM section 2.7.2). Only
text is restored: a previous image or file list is not (its owner keeps it until
the first paste, after which the clipboard holds the restored text, or nothing).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import select
import threading
from concurrent.futures import Future
from typing import Any

from Xlib import X, Xatom, error
from Xlib.display import Display
from Xlib.protocol import event, request

log = logging.getLogger("coordd.gui")

INCR_CHUNK = 64 * 1024  # bytes per INCR step, well under the X request limit
READ_TIMEOUT = 0.5  # seconds to wait for another owner to hand over the previous content
TEXT_TARGETS = ("UTF8_STRING", "text/plain;charset=utf-8", "TEXT", "STRING", "text/plain")


class ClipboardDead(Exception):
    """The X connection of the clipboard thread is gone."""


def _id(resource) -> int:
    """python-xlib hands out windows as objects or as plain ids depending on the call."""
    return getattr(resource, "id", resource)


def open_display(name: str | None = None) -> Display:
    """Xlib.Display, without python-xlib's 'no xauthority details' print on stdout (it is not an error)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return Display(name)


class Clipboard:
    def __init__(self, display_name: str | None = None) -> None:
        self.d = open_display(display_name)
        self.d.set_error_handler(self._x_error)
        root = self.d.screen().root
        self.win = root.create_window(-10, -10, 1, 1, 0, X.CopyFromParent, event_mask=X.PropertyChangeMask)
        atom = self.d.get_atom
        self.CLIPBOARD, self.TARGETS, self.INCR = atom("CLIPBOARD"), atom("TARGETS"), atom("INCR")
        self.UTF8, self.ATOM_PAIR = atom("UTF8_STRING"), atom("ATOM_PAIR")
        self.text_targets = {atom(t): t for t in TEXT_TARGETS}
        self.read_prop = atom("COORDD_CLIPBOARD")
        self.content: bytes | None = None  # what we serve while we own the selection
        self.owned = False
        self.fetched = 0  # completed data transfers; the GUI thread waits for this to grow
        self.lost = 0  # times another client took the selection from us
        self.dead: str | None = None
        self.cond = threading.Condition()
        # (window, prop) -> the transfer: (the requestor's Xlib window, type, data, offset)
        self._incr: dict[tuple[int, int], tuple[Any, int, bytes, int]] = {}
        self._reading: Future | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self.d.sync()
        self.thread = threading.Thread(target=self._serve, name="coordd-clipboard", daemon=True)
        self.thread.start()

    # --- the GUI thread's side -------------------------------------------------------------

    def own(self, data: bytes) -> None:
        """Serve data from now on; the X server knows we own the clipboard when this returns."""
        self._call(self._own, data)

    def mark(self) -> tuple[int, int]:
        """Take this right before the paste key, and pass it to wait_fetched."""
        with self.cond:
            return self.fetched, self.lost

    def read(self) -> bytes | None:
        """The clipboard's current text, or None if it is empty or not text."""
        fut = self._call(self._start_read)
        if fut is None or isinstance(fut, bytes):
            return fut
        try:
            return fut.result(READ_TIMEOUT)
        except TimeoutError:
            log.info("the clipboard owner did not hand over its content within %g s: not restoring it", READ_TIMEOUT)
            return None

    def release(self) -> None:
        """Leave the clipboard empty (what it was before we pasted)."""
        self._call(self._release)

    def wait_fetched(self, mark: tuple[int, int], timeout: float) -> str:
        """'fetched' once a transfer completed after the mark; 'lost' if another client took
        the selection first (it cannot be confirmed then); 'timeout' otherwise."""
        since, lost = mark
        with self.cond:
            self.cond.wait_for(lambda: self.fetched > since or self.lost != lost or self.dead, timeout)
            if self.dead:
                raise ClipboardDead(self.dead)
            if self.fetched > since:
                return "fetched"
            return "lost" if self.lost != lost else "timeout"

    def close(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(ClipboardDead):
                self._call(None)
            self.thread.join(2)
        os.close(self._wake_r)
        os.close(self._wake_w)
        with contextlib.suppress(Exception):
            self.d.close()

    def _call(self, fn, *args):
        if self.dead:
            raise ClipboardDead(self.dead)
        fut: Future = Future()
        self._calls.put((fn, args, fut))
        os.write(self._wake_w, b"x")
        try:
            return fut.result(5)
        except TimeoutError:
            raise ClipboardDead("the clipboard thread did not answer within 5 s") from None

    # --- the clipboard thread ---------------------------------------------------------------

    def _serve(self) -> None:
        fd = self.d.fileno()
        try:
            while True:
                with self.cond:  # events read during a call's round trip wait in python-xlib's queue
                    while self.d.pending_events():
                        self._handle(self.d.next_event())
                readable, _, _ = select.select([fd, self._wake_r], [], [])
                if self._wake_r in readable:
                    os.read(self._wake_r, 512)
                    while not self._calls.empty():
                        fn, args, fut = self._calls.get()
                        if fn is None:
                            fut.set_result(None)
                            return
                        try:
                            fut.set_result(fn(*args))
                        except Exception as e:
                            fut.set_exception(e)
                            if isinstance(e, (error.ConnectionClosedError, OSError)):
                                raise
        except (error.ConnectionClosedError, OSError) as e:
            self._die(f"X connection closed: {e}")
        except Exception as e:  # never leave the GUI thread waiting on a dead server thread
            log.exception("clipboard thread failed")
            self._die(f"clipboard thread failed: {e!r}")

    def _die(self, reason: str) -> None:
        with self.cond:
            self.dead = reason
            self.cond.notify_all()
        if self._reading is not None and not self._reading.done():
            self._reading.set_result(None)
        while not self._calls.empty():
            _, _, fut = self._calls.get()
            fut.set_exception(ClipboardDead(reason))

    def _own(self, data: bytes) -> None:
        self.content = data
        if not self.owned:
            self.win.set_selection_owner(self.CLIPBOARD, X.CurrentTime)
            if _id(self.d.get_selection_owner(self.CLIPBOARD)) != self.win.id:  # a round trip: the server has it
                raise RuntimeError("could not take the X clipboard")
            self.owned = True

    def _release(self) -> None:
        self.content = None
        # Only if we still own it (a SelectionClear may not have arrived yet): never empty another's clipboard.
        if self.owned and _id(self.d.get_selection_owner(self.CLIPBOARD)) == self.win.id:
            request.SetSelectionOwner(
                display=self.d.display, window=X.NONE, selection=self.CLIPBOARD, time=X.CurrentTime
            )
            self.d.sync()
        self.owned = False

    def _start_read(self) -> bytes | Future | None:
        if self.owned:
            return self.content
        if _id(self.d.get_selection_owner(self.CLIPBOARD)) == X.NONE:
            return None
        self._reading = Future()
        self.win.delete_property(self.read_prop)
        self.win.convert_selection(self.CLIPBOARD, self.UTF8, self.read_prop, X.CurrentTime)
        self.d.flush()
        return self._reading

    def _handle(self, ev) -> None:
        if ev.type == X.SelectionRequest:
            self._answer(ev)
        elif ev.type == X.SelectionClear and ev.atom == self.CLIPBOARD:
            self.owned = False
            self.content = None
            self.lost += 1
            self.cond.notify_all()
        elif ev.type == X.SelectionNotify and _id(ev.requestor) == self.win.id:
            self._finish_read(ev)
        elif ev.type == X.PropertyNotify and ev.state == X.PropertyDelete:
            self._incr_step(_id(ev.window), ev.atom)

    def _finish_read(self, ev) -> None:
        fut, self._reading = self._reading, None
        if fut is None or fut.done():
            return
        data = None
        if ev.property != X.NONE:
            prop = self.win.get_full_property(self.read_prop, X.AnyPropertyType)
            if prop is not None and prop.property_type != self.INCR and prop.format == 8:
                value = prop.value  # python-xlib decodes UTF8_STRING properties to str itself
                data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            elif prop is not None:
                log.info("the previous clipboard content is too large or not text: not restoring it")
            self.win.delete_property(self.read_prop)
        fut.set_result(data)

    def _answer(self, ev) -> None:
        prop = ev.property or ev.target  # obsolete clients leave the property to the owner
        ok = False
        content = self.content
        if ev.selection == self.CLIPBOARD and self.owned and content is not None:
            if ev.target == self.TARGETS:
                targets = [self.TARGETS, *self.text_targets]
                ev.requestor.change_property(prop, Xatom.ATOM, 32, targets)
                ok = True
            elif ev.target in self.text_targets:
                ok = True
                if len(content) > INCR_CHUNK:
                    self._incr_start(ev.requestor, prop, ev.target, content)
                else:
                    ev.requestor.change_property(prop, self._type(ev.target), 8, _as_target(content, ev.target))
                    self.fetched += 1
                    self.cond.notify_all()
        reply = event.SelectionNotify(
            time=ev.time,
            requestor=ev.requestor,
            selection=ev.selection,
            target=ev.target,
            property=prop if ok else X.NONE,
        )
        ev.requestor.send_event(reply)
        self.d.sync()  # the requestor has the data before the GUI thread sends the next key

    def _type(self, target: int) -> int:
        return Xatom.STRING if target == Xatom.STRING else self.UTF8

    def _incr_start(self, requestor, prop: int, target: int, content: bytes) -> None:
        data = _as_target(content, target)
        requestor.change_attributes(event_mask=X.PropertyChangeMask)
        requestor.change_property(prop, self.INCR, 32, [len(data)])
        self._incr[(requestor.id, prop)] = (requestor, self._type(target), data, 0)

    def _incr_step(self, window: int, prop: int) -> None:
        """The requestor deleted the property: it wants the next chunk (an empty one ends it)."""
        transfer = self._incr.get((window, prop))
        if transfer is None:
            return
        requestor, type_, data, offset = transfer
        chunk = data[offset : offset + INCR_CHUNK]
        requestor.change_property(prop, type_, 8, chunk)
        if chunk:
            self._incr[(window, prop)] = (requestor, type_, data, offset + len(chunk))
        else:
            del self._incr[(window, prop)]
            requestor.change_attributes(event_mask=X.NoEventMask)
            self.fetched += 1
            self.cond.notify_all()
        self.d.sync()

    def _x_error(self, err, req) -> None:
        # A requestor window that vanished mid-transfer: drop its transfer, keep serving.
        log.debug("X error on the clipboard connection: %s", err)


def _as_target(content: bytes, target: int) -> bytes:
    """content (UTF-8) as the requested target type."""
    if target == Xatom.STRING:  # Latin-1 by definition
        return content.decode("utf-8", "replace").encode("latin-1", "replace")
    return content
