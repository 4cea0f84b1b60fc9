"""A tiny agent input line for tmux tests: reads bracketed pastes and Enter, appends each submission to a file.

Why not `cat >> FILE`: cat reads lines, so a multi-line message lands as several
lines and messages cannot be told apart. Like the agent CLIs it stands in for,
this program puts the terminal in raw mode and turns on bracketed paste; a paste
(ESC[200~ ... ESC[201~) and typed characters go into the input line, shown on
screen, and Enter (CR) submits it: the input is appended to FILE as one JSON
line {"text": ..., "busy": ...}, then the input line is cleared ("> " prompt).

    python tmux_reader.py FILE [--ignore-enters N] [--busy-ms MS] [--shell-after N] [--no-bracketed-paste]

--ignore-enters N: the first N Enter presses do nothing (an Enter that got lost).
--busy-ms MS: print a "working" line every 20 ms for MS ms before showing the
prompt; a submission records whether it arrived while busy.
--shell-after N: after the Nth submission, become a shell (the agent quit): the
terminal is restored and the process execs sh, which moves to a new line and
shows its prompt; so once the input line changes, the pane runs a shell.
--no-bracketed-paste: leave bracketed paste off, so a paste's newlines arrive as
Enter (CR) and each submits, as in a program that never asked for it.

Like Claude Code and Codex, C-j (LF) and M-Enter (ESC CR) put a newline into the
input line without submitting it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import termios
import time
import tty

START, END = b"\x1b[200~", b"\x1b[201~"
NEWLINE_KEYS = (b"\n", b"\x1b\r")  # C-j, M-Enter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--ignore-enters", type=int, default=0)
    ap.add_argument("--busy-ms", type=int, default=0)
    ap.add_argument("--shell-after", type=int, default=0)
    ap.add_argument("--no-bracketed-paste", action="store_true")
    args = ap.parse_args()
    out = open(args.file, "a", encoding="utf-8")
    cooked = termios.tcgetattr(0)
    submitted = 0
    # TCSANOW, not setraw's default TCSAFLUSH: input typed while this program was starting (coordd may paste
    # once the pane's foreground program is no longer a shell) is kept and read, not thrown away. It went
    # through the cooked line discipline, which turned each Enter into "\n" (ICRNL): read it as typed.
    tty.setraw(0, termios.TCSANOW)
    early = os.read(0, 65536).replace(b"\n", b"\r") if select.select([0], [], [], 0)[0] else b""
    if not args.no_bracketed_paste:
        os.write(1, b"\x1b[?2004h")  # ask the terminal (tmux) for bracketed paste
    busy_until = time.monotonic() + args.busy_ms / 1000
    ticks = 0
    ignore = args.ignore_enters
    line = bytearray()
    pending = b""
    in_paste = False
    prompt_shown = False
    while True:
        busy = time.monotonic() < busy_until
        if not busy and not prompt_shown:
            os.write(1, b"> ")
            prompt_shown = True
        if busy and not select.select([0], [], [], 0.02)[0]:
            ticks += 1
            os.write(1, b"working %d\r\n" % ticks)
            continue
        data, early = early or os.read(0, 65536), b""
        if not data:
            return
        pending += data
        while pending:
            if in_paste:
                end = pending.find(END)
                if end < 0:  # keep a possible partial end marker for the next read
                    keep = next((k for k in range(len(END) - 1, 0, -1) if pending.endswith(END[:k])), 0)
                    chunk, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
                else:
                    chunk, pending, in_paste = pending[:end], pending[end + len(END) :], False
                chunk = chunk.replace(b"\r", b"\n")  # tmux pastes newlines as CR
                line += chunk
                os.write(1, chunk.replace(b"\n", b"\r\n"))
                if end < 0:
                    break
            elif pending.startswith(START):
                in_paste, pending = True, pending[len(START) :]
            elif START.startswith(pending):  # a start marker cut in two: wait for the rest
                break
            elif key := next((k for k in NEWLINE_KEYS if pending.startswith(k)), None):
                pending = pending[len(key) :]
                line += b"\n"
                os.write(1, b"\r\n")
            elif pending[:1] == b"\r":
                pending = pending[1:]
                if ignore > 0:
                    ignore -= 1
                    continue
                record = {"text": line.decode("utf-8", "replace"), "busy": time.monotonic() < busy_until}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                submitted += 1
                if submitted == args.shell_after:
                    termios.tcsetattr(0, termios.TCSANOW, cooked)
                    os.write(1, b"\x1b[?2004l")
                    os.execvp("sh", ["sh", "-c", "printf '\\r\\n'; exec sh"])
                line.clear()
                os.write(1, b"\r\n> " if prompt_shown else b"\r\n")
            else:
                line += pending[:1]
                os.write(1, pending[:1])
                pending = pending[1:]


if __name__ == "__main__":
    main()
