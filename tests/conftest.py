import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def fuse_eval_dir() -> pathlib.Path:
    """The real FuseMedML evaluation inputs shipped beside the repository."""
    d = SHARED / "peer-data" / "fuse-eval"
    if not d.is_dir():
        pytest.fail(f"reference data not found at {d}: the checkout needs ../shared beside it")
    return d


@pytest.fixture(autouse=True)
def _release_fusefn_logging():
    """A recipe run inside a test attaches fusefn's handlers; detach them so later tests see plain logging."""
    yield
    import fusefn.log

    fusefn.log.stop()
