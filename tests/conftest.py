"""Fixtures for every test folder: private Postfix labs and their skip rule.

Tests marked ``postfix`` skip when Postfix cannot run here (not installed, or
not root). With ``CI=true`` they fail instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from postfixlab import LabFactory, PostfixLab, unavailable_reason

# A config without [storage] state_dir uses the user's state folder: point
# it at a fresh one, so models or logs of a phishgate run by hand on this
# machine (an activated model, say) never reach the tests, nor the tests' it.
os.environ.pop("STATE_DIRECTORY", None)
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="phishgate-tests-state-")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_postfix() -> None:
    """Skip the current test without a usable Postfix; fail instead in CI."""
    reason = unavailable_reason()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"CI=true, so Postfix tests may not skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the skip rule to tests marked ``postfix`` before their fixtures."""
    if item.get_closest_marker("postfix") is not None:
        require_postfix()


@pytest.fixture(scope="session")
def make_postfix_lab() -> Iterator[LabFactory]:
    """Start a lab per call, with PostfixLab's options; all purged at the end."""
    labs: list[PostfixLab] = []

    def make(**options: Any) -> PostfixLab:
        require_postfix()
        lab = PostfixLab(**options)
        labs.append(lab)
        lab.start()
        return lab

    yield make

    errors: list[Exception] = []
    for lab in labs:
        try:
            lab.purge()
        except Exception as exc:  # purge the others first, then raise them all
            errors.append(exc)
    if errors:
        raise ExceptionGroup("Postfix labs did not stop cleanly", errors)


@pytest.fixture(scope="session")
def postfix_lab(make_postfix_lab: LabFactory) -> PostfixLab:
    """One lab with every listener, shared by the session: select by recipient."""
    return make_postfix_lab()
