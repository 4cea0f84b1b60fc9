#!/usr/bin/env python3
"""Regression detection: a run of perf/bench.py against the committed baseline of its ratios (perf/baseline.json).

Only ratios are compared, each a figure over its own floor measured in the same run (a send's p50 over the
durable echo's, 8 clients' msgs/s over 8 clients' on the durable echo, ...): absolute times move from machine
to machine, ratios much less. A figure is the median of its per-round ratios (bench.py measures in alternating
rounds); its noise is half the spread of those rounds, relative to the median. A figure regresses when it is
worse than the baseline by more than the threshold plus that noise.

    python perf/compare.py RESULTS.json [--baseline FILE] [--threshold 0.05]    exit 1 on a regression
    python perf/compare.py RESULTS.json --write-baseline                       the baseline, deliberately
    python perf/compare.py --run [--quick] [--rounds N] [--gate] [...]   run bench.py's suite first;
        --gate is what `make test` runs (`make bench-gate`): a figure that regressed is measured once more
        before failing, a run on a busy machine (LOADED) is not judged, DISK_BOUND figures are reported only

Exit codes: 0 no regression; 1 a regression; 2 usage, or a figure of the baseline missing from the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline.json"
# The benchmarks whose figures the baseline holds (bench.py --only): the others have no floor to divide by.
SUITE = "send,cli,startup,batch,concurrent"
RERUN = "make bench-compare"
# With more runnable work than this many times the CPUs (the 1-minute load average, at the start or the end of
# the run), other jobs took turns with the daemon and not with its floors alike (the disk above all: deliveries
# write files, a floor one commit), and ratios moved 2-4x on the shared 2-core machine. The gate (--gate)
# then does not judge: a false alarm is as bad as a missed regression.
LOADED = 1.5
# What the gate reports but does not fail on: the figures bound by the disk's file creation (each delivery writes
# an inbox file), which swings 40% within minutes on these VMs as deletions turn into discards, for instance right
# after a run removed its thousands of inbox files (README, Performance). `make bench-compare` judges them.
DISK_BOUND = frozenset({"send_p50", "batch_rate", "concurrent_rate"})


@dataclass(frozen=True)
class Finding:
    key: str
    name: str
    better: str  # "lower" or "higher"
    baseline: float
    ratio: float  # the median of the rounds' ratios
    rounds: tuple[float, ...]
    worse_by: float  # relative: 0.10 is 10% worse than the baseline, -0.10 10% better
    noise: float  # relative half-spread of the rounds
    regressed: bool


def noise_of(rounds: list[float] | tuple[float, ...]) -> float:
    """Half the spread of the rounds relative to their median: 0 with a single round."""
    if len(rounds) < 2:
        return 0.0
    return (max(rounds) - min(rounds)) / 2 / statistics.median(rounds)


def worse_by(better: str, baseline: float, ratio: float) -> float:
    """How much worse `ratio` is than `baseline`, relative (negative: better)."""
    if better == "lower":
        return ratio / baseline - 1
    if better == "higher":
        return baseline / ratio - 1
    raise ValueError(f"better must be lower or higher, not {better!r}")


def figures(results: dict) -> dict[str, dict]:
    """The figures of a bench.py result (rows with a key), by key."""
    return {r["key"]: r for r in results["rows"] if r.get("key") and r.get("rounds")}


def compare(baseline: dict, results: dict, threshold: float) -> list[Finding]:
    """Every figure of the baseline found in results, each judged; KeyError names one the results lack."""
    got = figures(results)
    out = []
    for key, base in baseline["figures"].items():
        if key not in got:
            raise KeyError(key)
        rounds = tuple(got[key]["rounds"])
        ratio, noise = statistics.median(rounds), noise_of(rounds)
        w = worse_by(base["better"], base["ratio"], ratio)
        out.append(
            Finding(
                key, got[key]["name"], base["better"], base["ratio"], ratio, rounds, w, noise, w > threshold + noise
            )
        )
    return out


def make_baseline(results: dict) -> dict:
    """The baseline of a run: each figure's median ratio, which way is better, and where it was measured."""
    return {
        "machine": results.get("machine", {}),
        "figures": {
            key: {
                "name": r["name"],
                "better": r["better"],
                "ratio": statistics.median(r["rounds"]),
                "rounds": r["rounds"],
            }
            for key, r in figures(results).items()
        },
    }


def report(findings: list[Finding], threshold: float, report_only: frozenset[str] = frozenset()) -> str:
    out = [
        f"| figure | baseline | now (rounds) | worse by | noise | verdict (> {threshold:.0%} + noise) |",
        "|---|---|---|---|---|---|",
    ]
    for f in findings:
        rounds = ", ".join(f"{r:.2f}" for r in f.rounds)
        verdict = ("worse (reported only)" if f.key in report_only else "**REGRESSION**") if f.regressed else "ok"
        out.append(
            f"| {f.name} [{f.key}, {f.better} is better] | {f.baseline:.3f}x | {f.ratio:.3f}x ({rounds}) | "
            f"{f.worse_by:+.1%} | {f.noise:.1%} | {verdict} |"
        )
    return "\n".join(out)


def check(
    results: dict, baseline: dict, threshold: float, report_only: frozenset[str] = frozenset()
) -> tuple[int, list[Finding]]:
    """(exit code, findings): print the report and say what regressed; figures in report_only do not count."""
    try:
        findings = compare(baseline, results, threshold)
    except KeyError as e:
        print(
            f"compare: the results have no figure {e}: run perf/bench.py with every benchmark of {SUITE}",
            file=sys.stderr,
        )
        return 2, []
    print(report(findings, threshold, report_only), flush=True)
    bad = [f for f in findings if f.regressed and f.key not in report_only]
    for f in bad:
        print(f"REGRESSION: {f.name} [{f.key}] is {f.worse_by:.1%} worse than the baseline (noise {f.noise:.1%})")
    return (1 if bad else 0), findings


def too_loaded(results: dict) -> str | None:
    """Why the run cannot be judged (the machine was busy with other work), or None."""
    m = results.get("machine", {})
    load = max(m.get("loadavg_start", 0.0), m.get("loadavg_end", 0.0))
    cpus = m.get("nproc") or 1
    if load > LOADED * cpus:
        return f"the load average was {load:.1f} on {cpus} CPUs (over {LOADED:g} a CPU)"
    return None


def run_bench(only: str, out: Path, quick: bool, rounds: int | None) -> dict:
    cmd = [sys.executable, str(HERE / "bench.py"), "--only", only, "--out", str(out)]
    cmd += ["--quick"] * quick + (["--rounds", str(rounds)] if rounds else [])
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)  # an error row lacks its figure: check() says so
    return json.loads(out.read_text())


def recheck(findings: list[Finding], results: dict, baseline: dict, args) -> tuple[int, dict]:
    """Measure the figures that regressed once more (their benchmarks alone): the exit code of that second look,
    and its results. On a shared machine one bad moment must not fail the build; a real regression regresses
    again."""
    suspects = {f.key for f in findings if f.regressed and f.key not in DISK_BOUND}
    benches = sorted({r["bench"] for r in results["rows"] if r.get("key") in suspects})
    print(f"\nmeasuring {', '.join(sorted(suspects))} once more ({','.join(benches)}) ...", flush=True)
    again = run_bench(",".join(benches), HERE / "results" / "compare-again.json", args.quick, args.rounds)
    base = {"figures": {k: v for k, v in baseline["figures"].items() if k in suspects}}
    code, _ = check(again, base, args.threshold, DISK_BOUND)
    return code, again


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", help="a perf/bench.py JSON result (else give --run)")
    ap.add_argument("--run", action="store_true", help=f"run perf/bench.py --only {SUITE} first")
    ap.add_argument("--quick", action="store_true", help="with --run: bench.py --quick")
    ap.add_argument("--rounds", type=int, help="with --run: bench.py --rounds")
    ap.add_argument(
        "--gate",
        action="store_true",
        help="what CI runs: a figure that regressed is measured once more before failing, a run on a busy machine "
        "is not judged, and the disk-bound figures are reported only",
    )
    ap.add_argument("--baseline", default=str(BASELINE))
    ap.add_argument("--threshold", type=float, default=0.05, help="worse by more than this plus the noise fails")
    ap.add_argument("--write-baseline", action="store_true", help="write the results' ratios as the baseline")
    args = ap.parse_args(argv)
    if args.run == bool(args.results):
        ap.error("give either a results file or --run")
    if args.run:
        (out := HERE / "results" / "compare.json").parent.mkdir(parents=True, exist_ok=True)
        results = run_bench(SUITE, out, args.quick, args.rounds)
    else:
        results = json.loads(Path(args.results).read_text())
    if args.write_baseline:
        base = make_baseline(results)
        missing = set(SUITE.split(",")) - {r.get("bench") for r in results["rows"] if r.get("key")}
        if missing:
            print(f"compare: the results lack the figures of {sorted(missing)}: not written", file=sys.stderr)
            return 2
        Path(args.baseline).write_text(json.dumps(base, indent=1) + "\n")
        print(f"baseline: {len(base['figures'])} figures written to {args.baseline}")
        if busy := too_loaded(results):
            print(f"warning: {busy}: a baseline from a quiet machine compares better", file=sys.stderr)
        return 0
    baseline = json.loads(Path(args.baseline).read_text())
    code, findings = check(results, baseline, args.threshold, DISK_BOUND if args.gate else frozenset())
    if code == 1 and args.gate:
        code, again = recheck(findings, results, baseline, args)
        busy = too_loaded(results) or too_loaded(again)
        if code == 1 and busy:
            print(
                f"\nNot judged: {busy}; other work shared the CPUs and the disk unevenly. Run `{RERUN}` on "
                "a quiet machine to know."
            )
            return 0
    if code:
        print(
            f"\nBenchmarks regressed (threshold {args.threshold:.0%} beyond the noise). The full comparison: "
            f"`{RERUN}` (5% threshold, 5 rounds); if the change is meant, `make bench-baseline` and commit "
            "perf/baseline.json."
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
