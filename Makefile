# The two set-up commands of the README: `make demo` and `make test`. Both work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests drive for real: a virtual X server with terminal windows, tmux, systemd-analyze,
# promtool (package prometheus) to lint the metrics, a headless chromium with its driver for the dashboard,
# and nats-server for the cluster tests.
APT_PKGS := xvfb xterm xclip tmux systemd x11-utils prometheus chromium chromium-driver nats-server

.PHONY: install install-test deps demo lint test bench bench-compare bench-baseline bench-gate clean

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "coordd needs Python 3.11 or newer"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# A regular (not editable) install: an editable one recompiles every module at each CLI start
# when PYTHONDONTWRITEBYTECODE is set.
install: $(BIN)/python
	$(BIN)/pip install -q .

install-test: $(BIN)/python
	$(BIN)/pip install -q '.[test,gui]'

# System packages the tests need, installed only where missing (needs root or sudo, and apt).
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Start coordd on the embedded default (8 inbox agents) in a throw-away runtime dir, send, show, stop.
demo: install
	@set -e; d=$$(mktemp -d); mkdir -m 700 $$d/run; \
	export XDG_RUNTIME_DIR=$$d/run XDG_STATE_HOME=$$d/state XDG_DATA_HOME=$$d/data; \
	unset COORDD_SOCKET COORDD_CONFIG; \
	$(BIN)/coordd run 2>$$d/coordd.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid; echo "--- coordd log"; cat $$d/coordd.log; rm -rf $$d' EXIT; \
	SECONDS=0; until $(BIN)/coordctl ping >/dev/null 2>&1; do \
		kill -0 $$pid || exit 1; [ $$SECONDS -lt 15 ] || { echo "coordd did not come up"; exit 1; }; done; \
	echo "\$$ coordctl ping"; $(BIN)/coordctl ping; \
	echo "\$$ coordctl send Agent-1 'Review PR #42 please' --sender Agent-2 --wait"; \
	$(BIN)/coordctl send Agent-1 'Review PR #42 please' --sender Agent-2 --wait; \
	echo "\$$ coordctl send Agent-3 'Deploy is blocked on tests' --priority urgent --sender Agent-4"; \
	$(BIN)/coordctl send Agent-3 'Deploy is blocked on tests' --priority urgent --sender Agent-4; \
	echo "\$$ coordctl broadcast 'Stand-up in 5 minutes' --sender Agent-6"; \
	$(BIN)/coordctl broadcast 'Stand-up in 5 minutes' --sender Agent-6 | tr '\n' ' '; echo; \
	printf '%s\n' '{"to": "Agent-5", "body": "Numbers for Q3?", "sender": "Agent-1"}' \
		'{"to": "Agent-7", "body": "Landing page copy is in", "sender": "Agent-2"}' > $$d/batch.jsonl; \
	echo "\$$ coordctl batch batch.jsonl"; $(BIN)/coordctl batch $$d/batch.jsonl | tr '\n' ' '; echo; \
	$(BIN)/coordctl send Agent-1 'Second message, delivered after the first' --sender Agent-2 --wait >/dev/null; \
	echo "\$$ coordctl status"; $(BIN)/coordctl status; \
	echo "\$$ coordctl history --limit 8"; $(BIN)/coordctl history --limit 8; \
	echo "\$$ ls $$XDG_DATA_HOME/coordd/agent_workspaces/Agent-1/inbox"; ls $$XDG_DATA_HOME/coordd/agent_workspaces/Agent-1/inbox; \
	echo "\$$ coordctl show 1"; $(BIN)/coordctl show 1

# The gates: lint, format and types (configured in pyproject.toml). coordctl is checked strictly: it ships py.typed.
lint: install-test
	# -q: diagnostics only; ruff warns about our '# noqa: sleep-ok' markers, which tests/test_conventions.py reads.
	$(BIN)/ruff check -q .
	$(BIN)/ruff format --check -q .
	$(BIN)/mypy --strict coordctl
	$(BIN)/mypy coordd

test: deps install-test lint
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) .
	$(MAKE) --no-print-directory bench-gate

# Every benchmark; each prints its table and writes perf/results/<name>.json. bench_gui needs Xvfb (make deps).
bench: install
	$(BIN)/python perf/bench.py
	$(BIN)/python perf/bench_startup.py
	$(BIN)/python perf/bench_tmux.py
	$(BIN)/python perf/bench_gui.py
	$(BIN)/python perf/bench_observability.py
	$(BIN)/pip install -q '.[dashboard]'  # bench_dashboard serves the dashboard (aiohttp)
	$(BIN)/python perf/bench_dashboard.py
	$(BIN)/python perf/bench_inbox.py
	$(BIN)/python perf/bench_search.py
	$(BIN)/pip install -q '.[mcp]'  # bench_mcp drives `coordctl mcp` with the SDK's client
	$(BIN)/python perf/bench_mcp.py

# Regression detection (perf/compare.py): perf/bench.py's suite in alternating rounds, each figure a ratio to a
# floor of the same run, against the committed perf/baseline.json. bench-compare: 5 rounds, fails on a figure
# more than 5% worse than the baseline beyond the noise of its rounds. bench-baseline: rewrites the baseline
# (commit it with the change that moved it). bench-gate, in `make test`: a short run (under 2 minutes) that fails
# only on a regression of more than 25% beyond the noise, seen twice (a suspect figure is measured once more),
# does not judge a run on a machine busy with other work, and only reports the figures bound by the disk.
bench-compare: install
	$(BIN)/python perf/compare.py --run --rounds 5

bench-baseline: install
	$(BIN)/python perf/compare.py --run --rounds 5 --write-baseline

bench-gate: install-test
	$(BIN)/python perf/compare.py --run --quick --gate --threshold 0.25

clean:
	rm -rf $(VENV) build *.egg-info
