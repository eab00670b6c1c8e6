"""Multi-label BCE: per-label positive weights equal torch's, a known-label mask, and the pos_weight helper."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusefn.errors import ConfigError
from fusefn.losses import BCEWithLogits, InvalidTargetError, check_targets, label_pos_weights


def make_batch(seed=0, n=12, labels=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(n, labels, generator=g, dtype=torch.float64) * 2,
        "y": torch.randint(0, 2, (n, labels), generator=g).double(),
        "known": (torch.rand(n, labels, generator=g) < 0.7).double(),
        "w": torch.rand(n, generator=g, dtype=torch.float64),
        "data": {"sample_id": [f"s{i}" for i in range(n)]},
    }


def test_per_label_pos_weight_equals_torch():
    b = make_batch()
    pw = (0.5, 1.0, 2.0, 7.5)
    got = BCEWithLogits(pred="logits", target="y", pos_weight=pw)(b)
    assert torch.equal(got, F.binary_cross_entropy_with_logits(b["logits"], b["y"], pos_weight=torch.tensor(pw)))
    one = BCEWithLogits(pred="logits", target="y", pos_weight=3.0)(b)
    assert torch.equal(one, F.binary_cross_entropy_with_logits(b["logits"], b["y"], pos_weight=torch.tensor(3.0)))


def test_mask_is_the_mean_over_known_labels_and_ignores_their_values():
    b = make_batch(1)
    pw = (1.0, 2.0, 0.5, 4.0)
    per = F.binary_cross_entropy_with_logits(b["logits"], b["y"], pos_weight=torch.tensor(pw), reduction="none")
    known = b["known"]
    expected = (per * known).sum() / known.sum()
    missing = b["y"].masked_fill(known == 0, float("nan"))  # missing labels stored as NaN
    loss = BCEWithLogits(pred="logits", target="y", pos_weight=pw, mask="known")
    got = loss({**b, "y": missing})
    assert torch.allclose(got, expected, atol=1e-12)
    logits = b["logits"].clone().requires_grad_(True)
    loss({**b, "y": missing, "logits": logits}).backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[known == 0] == 0)  # a missing label pulls nothing
    # all known: the unmasked loss; no label known: 0
    full = BCEWithLogits(pred="logits", target="y", mask="ones")({**b, "ones": torch.ones(12, 4)})
    assert torch.allclose(full, BCEWithLogits(pred="logits", target="y")(b), atol=1e-12)
    none = BCEWithLogits(pred="logits", target="y", mask="zeros")({**b, "zeros": torch.zeros(12, 4)})
    assert float(none) == 0.0
    # with sample weights: each known entry weighted by its sample's weight
    w = BCEWithLogits(pred="logits", target="y", mask="known", sample_weight="w")(b)
    ww = known * b["w"][:, None]
    assert torch.allclose(
        w, (F.binary_cross_entropy_with_logits(b["logits"], b["y"], reduction="none") * ww).sum() / ww.sum(), atol=1e-12
    )


def test_check_targets_skips_missing_labels_and_names_bad_known_ones():
    b = make_batch(2)
    y = b["y"].masked_fill(b["known"] == 0, float("nan"))
    loss = BCEWithLogits(pred="logits", target="y", mask="known")
    check_targets({"bce": loss}, {**b, "y": y})  # NaN only where unknown: nothing to say
    row = int(torch.nonzero(b["known"][:, 0])[0])
    y[row, 0] = float("nan")
    with pytest.raises(InvalidTargetError, match=f"'s{row}'"):
        check_targets({"bce": loss}, {**b, "y": y})


def test_label_pos_weights():
    y = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 1]])
    assert label_pos_weights(y) == (3.0, 3.0, 1 / 3)
    known = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]])
    assert label_pos_weights(y, known) == (2.0, 3.0, 0.5)
    assert label_pos_weights(np.zeros((3, 2))) == (1.0, 1.0)


def test_pos_weight_validated():
    with pytest.raises(ConfigError, match="pos_weight"):
        BCEWithLogits(pred="p", target="t", pos_weight=(1.0, -2.0))
    assert BCEWithLogits(pred="p", target="t", pos_weight=[1, 2]).pos_weight == (1.0, 2.0)
