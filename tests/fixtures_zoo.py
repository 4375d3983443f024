"""Session fixtures: the micro toy zoos, built once per session into ./zoo (reused while the builder is unchanged).

Import them from ``tests/conftest.py`` with ``from tests.fixtures_zoo import *``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["lm_zoo_micro", "vit_zoo_micro"]


@pytest.fixture(scope="session")
def lm_zoo_micro() -> Path:
    """``zoo/lm-llama-micro``: a llama base, three specialists, six lm-eval tasks (about 40 s to build)."""
    from hm3.zoo import ensure_zoo

    return ensure_zoo("lm", family="llama", size="micro").resolve()


@pytest.fixture(scope="session")
def vit_zoo_micro() -> Path:
    """``zoo/vit-clip-micro``: a CLIP vision base, three domain specialists with heads (about 20 s to build)."""
    from hm3.zoo import ensure_zoo

    return ensure_zoo("vit", size="micro").resolve()
