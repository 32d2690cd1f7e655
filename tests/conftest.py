"""Shared test setup: makes the helper modules in tests/ importable and locates ../shared/fixtures."""
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def modelscope_fixture_dir() -> Path:
    path = SHARED_FIXTURES / "modelscope"
    if not path.is_dir():
        pytest.skip(f"shared fixtures not found at {path} (CI clones the repo with shared/ beside it)")
    return path
