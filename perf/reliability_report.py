"""The reliability figures: run the crash, fault, hostile-input and access tests, and the soak; write the table.

    python perf/reliability_report.py [--soak] [--no-tests]

Runs tests/test_crash.py, test_storage_faults.py, test_transport_faults.py,
test_hostile.py and test_access.py with COORDD_FIGURES_DIR set, so that each
scenario writes what it measured (tests/figures.py); with --soak also runs
perf/soak.py (minutes), else it uses the last perf/results/soak.json if there is
one. Then it prints the figures as a Markdown table, writes them to
perf/results/reliability.json, and puts the table into README.md between
`<!-- reliability:start -->` and `<!-- reliability:end -->` in the
"## Reliability" section (added at the end of the README when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "perf" / "results"
OUT = RESULTS / "reliability.json"
README = ROOT / "README.md"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
TESTS = [
    "test_crash.py",
    "test_storage_faults.py",
    "test_transport_faults.py",
    "test_hostile.py",
    "test_access.py",
    # the hardening tests (issue 10): each records the defect it replays and what happens now
    "test_client_trust.py",
    "test_private_files.py",
    "test_names_and_keys.py",
    "test_terminal_safety.py",
    "test_limits.py",
    "test_tmux.py::test_a_multi_line_message_is_one_input_to_a_program_without_bracketed_paste",
    "test_core.py::test_a_handler_that_raises_is_reported_as_internal_and_everything_goes_on",
]
SECTION = f"""## Reliability

What the reliability tests prove, each against the real daemon: clients keep sending (with idempotency keys)
while coordd is SIGKILLed and restarted, and every acknowledged message is delivered exactly once, in order,
to the right agent (`tests/test_crash.py`); a full disk under the database gets `storage_full` and coordd
resumes once space is freed, and a corrupt database stops the start without being touched
(`tests/test_storage_faults.py`); failing transports back off, fail with the reason and resume
(`tests/test_transport_faults.py`); fuzzed frames, a thousand connections and control characters get typed
errors or a closed connection (`tests/test_hostile.py`); other uids are refused unless allow-listed
(`tests/test_access.py`); and each hardening test replays an attack or defect found in review (a squatted
socket, planted links, a second daemon on one database, loose file modes, forged names and keys, terminal
escapes, deep nesting, slow and idle connection floods, a huge batch) and shows what happens now (one row each
below). The soak (`perf/soak.py`, not in CI) sends 1,000,000 messages with
`retention.max_messages = 100000`: the daemon's RSS stays under 80 MB and the database (file and WAL) under
48 MB for messages of about 100 bytes (with `--transport inbox`, real inbox agents whose files it deletes as
they arrive, it ran at 4,200 to 5,800 msg/s over two runs, as this disk's state went, with a peak RSS of
55 MB, most of it the 40,000 messages the queue limits let wait). `python perf/reliability_report.py` reruns
the tests and rewrites this table (`--soak`: the soak too).

{START}
{END}
"""


def run_tests() -> tuple[int, dict[str, dict]]:
    """Run the tests; (pytest's exit code, the figures each scenario wrote, by name)."""
    figures_dir = Path(tempfile.mkdtemp(prefix="coordd-figures-"))
    try:
        env = {**os.environ, "COORDD_FIGURES_DIR": str(figures_dir), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
        code = subprocess.run(cmd, cwd=ROOT / "tests", env=env).returncode
        return code, {p.stem: json.loads(p.read_text()) for p in sorted(figures_dir.glob("*.json"))}
    finally:
        shutil.rmtree(figures_dir, ignore_errors=True)


def load(tests: dict[str, dict] | None) -> dict[str, dict]:
    """The tests' figures (those of the last report with --no-tests), and the last soak's."""
    if tests is None:
        last = json.loads(OUT.read_text()) if OUT.exists() else {}
        tests = {k: v for k, v in last.items() if k != "soak"}
    figures = dict(tests)
    soak = RESULTS / "soak.json"
    if soak.exists():
        figures["soak"] = json.loads(soak.read_text())
    return figures


def table(f: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(figure, value, where it comes from)."""
    message_scenarios = {k: v for k, v in f.items() if "acknowledged" in v}
    sent = sum(v.get("sent", v["acknowledged"]) for v in message_scenarios.values())
    acked = sum(v["acknowledged"] for v in message_scenarios.values())
    lost = sum(v.get("lost", 0) for v in message_scenarios.values())
    dup = sum(v.get("duplicated", 0) for v in message_scenarios.values())
    misrouted = sum(v.get("misrouted", 0) for v in message_scenarios.values())
    faults = {k: v["faults"] for k, v in f.items() if "faults" in v}
    crash, fuzz, conns, soak = f.get("crash", {}), f.get("fuzz", {}), f.get("connections", {}), f.get("soak")
    peaks = {k: v["peak_rss_kib"] / 1024 for k, v in f.items() if "peak_rss_kib" in v}
    rows = [
        ("messages sent", f"{sent:,}", ", ".join(sorted(message_scenarios)) or "-"),
        ("acknowledged", f"{acked:,}", "each kept until delivered"),
        ("lost", f"{lost:,}", "acknowledged but never delivered"),
        ("duplicated", f"{dup:,}", "delivered twice"),
        ("misrouted", f"{misrouted:,}", "delivered to another agent"),
        (
            "SIGKILLs under load",
            str(crash.get("kills", "-")),
            f"{crash.get('clients', '-')} clients, {crash.get('resends', '-')} resends, "
            f"{crash.get('resends_found_stored', '-')} found already stored by their key",
        ),
        ("faults injected", str(sum(faults.values())), ", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "-"),
        ("frames fuzzed", f"{fuzz.get('frames', 0):,}", f"{fuzz.get('connections', 0):,} connections, hypothesis"),
        (
            "RSS growth over the fuzzing",
            f"{(fuzz.get('rss_after_kib', 0) - fuzz.get('rss_before_kib', 0)) / 1024:.1f} MB",
            "after a warm-up round",
        ),
        ("connections held at once", f"{conns.get('connections_held', 0):,}", "idle, not reading, half a frame"),
        (
            "peak RSS in the tests",
            f"{max(peaks.values(), default=0):.1f} MB",
            ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())),
        ),
    ]
    # Each hardening test (issue 10) records the attack or defect it replays and what happens now.
    # (A test run for both clients records the same row twice: it is shown once.)
    rows += dict.fromkeys((v["hardening"], "held", v["outcome"]) for _, v in sorted(f.items()) if "hardening" in v)
    if soak:
        rows += [
            (
                "soak: messages",
                f"{soak['messages']:,}",
                f"{soak['transport']} agents, retention {soak['retention_max_messages']:,}",
            ),
            ("soak: delivered", f"{soak['delivered_per_s']:,} msg/s", f"{soak['failed']} failed"),
            ("soak: peak RSS", f"{soak['peak_rss_mb']} MB", f"bound {soak['rss_limit_mb']:g} MB"),
            ("soak: peak database + WAL", f"{soak['peak_db_mb']} MB", f"bound {soak['db_limit_mb']:g} MB"),
        ]
    return rows


def markdown(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| figure | value | detail |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def write_readme(md: str) -> None:
    text = README.read_text() if README.exists() else ""
    if START not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{md}\n{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", action="store_true", help="run perf/soak.py first (minutes)")
    ap.add_argument("--no-tests", action="store_true", help="use the figures of the last run")
    args = ap.parse_args()
    code, tests = run_tests() if not args.no_tests else (0, None)
    if args.soak:
        code |= subprocess.run([sys.executable, str(ROOT / "perf" / "soak.py")]).returncode
    figures = load(tests)
    if not figures:
        print("no figures: run without --no-tests", file=sys.stderr)
        return 1
    md = markdown(table(figures))
    print(md)
    if code != 0:  # a failed or broken run's figures must not replace a good run's
        print(f"the run failed (exit {code}): {OUT} and the README's table are left as they were", file=sys.stderr)
        return code
    RESULTS.mkdir(parents=True, exist_ok=True)  # perf/results/ is not in git: a fresh clone has none
    OUT.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    write_readme(md)
    print(f"wrote {OUT} and the table in {README}")
    return code


if __name__ == "__main__":
    sys.exit(main())
