"""perf/compare.py, the benchmark regression check, on recorded results (no benchmark runs here).

fixtures/bench/run_a.json and run_b.json: two `perf/bench.py --quick` runs of the compared suite on the same
code, one after the other, on a loaded 2-core machine (trimmed to the rows compare reads). A slowdown is planted
by scaling one figure's rounds, as a slower daemon would move them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parent.parent / "perf"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bench"
sys.path.insert(0, str(PERF))

import compare  # noqa: E402  (perf/compare.py)


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def planted(results: dict, key: str, slower: float) -> dict:
    """results with figure `key` made `slower` times worse in every round (a latency up, a rate down)."""
    out = copy.deepcopy(results)
    for r in out["rows"]:
        if r.get("key") == key:
            r["rounds"] = [x * slower if r["better"] == "lower" else x / slower for x in r["rounds"]]
    return out


def test_the_recordings_hold_every_figure_of_the_suite() -> None:
    for name in ("run_a.json", "run_b.json"):
        benches = {r["bench"] for r in load(name)["rows"] if r.get("key")}
        assert benches == set(compare.SUITE.split(","))


def test_a_second_run_of_the_same_code_is_no_regression_at_the_gates_threshold() -> None:
    base = compare.make_baseline(load("run_a.json"))
    findings = compare.compare(base, load("run_b.json"), threshold=0.25)
    assert findings and not [f for f in findings if f.regressed]


@pytest.mark.parametrize(
    "key",
    [
        "send_p50",
        "send_bare_p50",
        "cli_send",
        "startup_existing",
        "startup_new",
        "batch_rate",
        "batch_held_rate",
        "concurrent_rate",
    ],
)
def test_a_planted_slowdown_is_found(key: str) -> None:
    # The recordings are from a very loaded machine: some figures' rounds spread by +-60%, so what is certain
    # beyond that noise is a 2x slowdown. A figure with tighter rounds is caught at 1.3x (next test).
    run = load("run_b.json")
    base = compare.make_baseline(run)
    findings = {f.key: f for f in compare.compare(base, planted(run, key, 2.0), threshold=0.05)}
    assert findings[key].regressed
    assert findings[key].worse_by == pytest.approx(1.0)
    assert [k for k, f in findings.items() if f.regressed] == [key]  # and nothing else


def test_a_30_percent_slowdown_of_a_figure_with_tight_rounds_is_found() -> None:
    run = load("run_b.json")
    [send] = [r for r in run["rows"] if r["key"] == "send_p50"]
    assert compare.noise_of(send["rounds"]) < 0.25  # this figure's rounds in the recording
    findings = {f.key: f for f in compare.compare(compare.make_baseline(run), planted(run, "send_p50", 1.3), 0.05)}
    assert findings["send_p50"].regressed


def test_noise_within_the_spread_of_the_rounds_is_not_a_regression() -> None:
    base = {"figures": {"x": {"name": "x", "better": "lower", "ratio": 2.0}}}
    # 8% worse at the median, but the rounds spread 2.0 to 2.4: noise 10%, so not beyond it.
    noisy = {"rows": [{"key": "x", "name": "x", "better": "lower", "rounds": [2.0, 2.16, 2.4]}]}
    [f] = compare.compare(base, noisy, threshold=0.05)
    assert f.worse_by == pytest.approx(0.08) and f.noise == pytest.approx(0.4 / 2 / 2.16)
    assert not f.regressed
    # The same median with tight rounds is beyond 5% + noise.
    tight = {"rows": [{"key": "x", "name": "x", "better": "lower", "rounds": [2.15, 2.16, 2.17]}]}
    assert compare.compare(base, tight, threshold=0.05)[0].regressed


def test_a_higher_is_better_figure_regresses_when_it_falls() -> None:
    base = {"figures": {"rate": {"name": "rate", "better": "higher", "ratio": 0.5}}}
    up = {"rows": [{"key": "rate", "name": "rate", "better": "higher", "rounds": [0.6, 0.6, 0.6]}]}
    down = {"rows": [{"key": "rate", "name": "rate", "better": "higher", "rounds": [0.4, 0.4, 0.4]}]}
    assert not compare.compare(base, up, threshold=0.05)[0].regressed
    assert compare.compare(base, down, threshold=0.05)[0].regressed


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PERF / "compare.py"), *args], capture_output=True, text=True)


def test_the_cli_exit_code(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    wrote = cli(str(FIXTURES / "run_b.json"), "--write-baseline", "--baseline", str(baseline))
    assert wrote.returncode == 0, wrote.stderr
    same = cli(str(FIXTURES / "run_b.json"), "--baseline", str(baseline))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "REGRESSION" not in same.stdout

    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(planted(load("run_b.json"), "send_p50", 1.3)))
    failed = cli(str(slow), "--baseline", str(baseline))
    assert failed.returncode == 1
    assert "REGRESSION: " in failed.stdout and "[send_p50]" in failed.stdout
    assert "make bench-compare" in failed.stdout  # says how to measure again

    lacking = tmp_path / "lacking.json"
    run = load("run_b.json")
    lacking.write_text(json.dumps(run | {"rows": [r for r in run["rows"] if r.get("key") != "cli_send"]}))
    missing = cli(str(lacking), "--baseline", str(baseline))
    assert missing.returncode == 2 and "cli_send" in missing.stderr


def test_the_committed_baseline_has_every_figure_the_suite_measures() -> None:
    base = json.loads((PERF / "baseline.json").read_text())
    assert set(base["figures"]) == {r["key"] for r in load("run_a.json")["rows"] if r.get("key")}
    assert all(f["better"] in ("lower", "higher") and f["ratio"] > 0 for f in base["figures"].values())


def test_a_run_on_a_machine_busy_with_other_work_is_not_judged_by_the_gate() -> None:
    calm = {"machine": {"nproc": 2, "loadavg_start": 1.2, "loadavg_end": 2.9}, "rows": []}
    busy = {"machine": {"nproc": 2, "loadavg_start": 1.2, "loadavg_end": 11.3}, "rows": []}
    assert compare.too_loaded(calm) is None
    assert "11.3 on 2 CPUs" in (compare.too_loaded(busy) or "")


def test_the_gate_reports_a_disk_bound_figure_without_failing_on_it(capsys: pytest.CaptureFixture[str]) -> None:
    run = load("run_b.json")
    base = compare.make_baseline(run)
    code, _ = compare.check(planted(run, "send_p50", 3.0), base, 0.25, compare.DISK_BOUND)
    assert code == 0 and "worse (reported only)" in capsys.readouterr().out
    code, _ = compare.check(planted(run, "cli_send", 3.0), base, 0.25, compare.DISK_BOUND)
    assert code == 1
