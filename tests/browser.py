"""A real, headless Chromium driven by Selenium, for the dashboard's tests and perf/dashboard_screenshot.py.

Debian's chromium and chromium-driver (`make deps` installs them). Both paths are given explicitly and
SE_OFFLINE is set, so that Selenium Manager never tries to download a browser or a driver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not shutil.which(path):
            return f"needs {path} (Debian: {package}; `make deps` installs it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install '.[test]')"
    return None


def chromium(profile: Path, size: tuple[int, int] = (1440, 1000)):
    """A headless Chromium with a fresh profile in `profile`; the caller quits it."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: use what is given, download nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root (CI containers), where the sandbox refuses to start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
