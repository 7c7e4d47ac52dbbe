"""Headless Debian Chromium driven by selenium through /usr/bin/chromedriver (no driver download)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
# without these Chromium keeps dialling Google's hosts, which this network refuses (env notes)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1400,1000")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    why = os.environ.get("FLEXGC_BROWSER_UNAVAILABLE")  # .ci/setup-browser.sh could not install it
    if not any(Path(p).exists() for p in CHROMIUM) and not shutil.which("chromium"):
        return why or "chromium is not installed (apt install chromium chromium-driver; .ci/setup-browser.sh does)"
    if not Path(CHROMEDRIVER).exists():
        return why or "chromedriver is not installed (apt install chromium-driver; .ci/setup-browser.sh does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra has it)"
    return None


def start(profile_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium") or "")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def console_errors(driver: Any) -> list[str]:
    """SEVERE console entries since the last call (Chromium's log is drained by reading it)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]

