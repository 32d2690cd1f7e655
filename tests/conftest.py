"""Shared test setup: makes the helper modules in tests/ importable and locates the checked-in fixtures."""
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FIXTURES = TESTS_DIR / "fixtures"


@pytest.fixture(scope="session")
def modelscope_fixture_dir() -> Path:
    """The tiny original-ModelScope checkpoint and the output the original implementation computed from it
    (fixtures/modelscope/README.md)."""
    return FIXTURES / "modelscope"


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models are faster on one thread, and the test box's cores are shared
    (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
