import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def fuse_eval_dir() -> pathlib.Path:
    """FuseMedML's KNIGHT evaluation inputs, shipped in the package (fusefn_recipes/reference/fuse_eval)."""
    from fusefn_recipes.reference import fuse_eval_dir as shipped

    return shipped()


@pytest.fixture(autouse=True)
def _release_fusefn_logging():
    """A recipe run inside a test attaches fusefn's handlers; detach them so later tests see plain logging."""
    yield
    import fusefn.log

    fusefn.log.stop()
