"""Device selection."""

import pytest
import torch

from fusefn.errors import ConfigError
from fusefn.train import select_device


def test_cpu_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_device():
    with pytest.raises(ConfigError, match="not a torch device"):
        select_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda:0")
