"""The report site's browser: Debian's headless Chromium (tests/support/chromium.py), a fresh profile per test."""
import tempfile

import pytest
from chromium import Browser, chromium_path


@pytest.fixture
def browser():
    binary = chromium_path()
    if binary is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="tsd-chromium-") as profile:
        b = Browser(binary, profile)
        try:
            yield b
        finally:
            b.close()
