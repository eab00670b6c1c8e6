"""gather() merges states across torch.distributed ranks (here a one-process gloo group)."""

import numpy as np
import pytest
import torch.distributed as dist

from fusefn.metrics import AUCROC, gather


def test_gather_is_identity_without_a_process_group():
    m = AUCROC(pred="s", target="y")
    s = m.update(m.init(), {"s": np.array([0.1, 0.9]), "y": np.array([0, 1])})
    assert gather(m, s) is s


@pytest.mark.slow
def test_gather_over_a_gloo_group(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m = AUCROC(pred="s", target="y")
        s = m.update(m.init(), {"s": np.array([0.1, 0.9, 0.4]), "y": np.array([0, 1, 1])})
        np.testing.assert_equal(gather(m, s), s)
    finally:
        dist.destroy_process_group()
