"""Fixtures of the verl plugin tests (helpers live in verl_testkit.py)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session")
def verl_plugin():
    """verl with the opdkit plugin loaded through its entry point (skips where verl is not installed)."""
    pytest.importorskip("verl")
    if "opdkit.integrations.verl.plugin" not in sys.modules:
        pytest.fail("importing verl did not load the opdkit plugin: is opdkit installed (pip install -e .)?")
    return sys.modules["opdkit.integrations.verl.plugin"]
