"""GFL losses and the GIoU wrapper against their formulas, written out element by element."""

import math

import pytest
import torch

from tid_d2.modeling.losses import (
    distribution_focal_loss,
    giou_loss_weighted,
    quality_focal_loss,
    sigmoid_focal_loss,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, t: float) -> float:
    p = _sigmoid(x)
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


def _qfl_reference(logits, labels, scores, beta):
    """Per-element QFL in Python floats: [N] list."""
    out = []
    for row, label, score in zip(logits.tolist(), labels.tolist(), scores.tolist()):
        total = 0.0
        for k, x in enumerate(row):
            p = _sigmoid(x)
            if k == label:
                total += _bce(x, score) * abs(score - p) ** beta
            else:
                total += _bce(x, 0.0) * p**beta
        out.append(total)
    return out


def _ce(row, k):
    m = max(row)
    return -(row[k] - m - math.log(sum(math.exp(v - m) for v in row)))


def test_qfl_two_class_by_hand():
    logits = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    labels = torch.tensor([1])
    scores = torch.tensor([0.8], dtype=torch.float64)
    p0, p1 = _sigmoid(0.5), _sigmoid(-1.0)
    expected = (
        -math.log(1 - p0) * p0**2 + -(0.8 * math.log(p1) + 0.2 * math.log(1 - p1)) * (0.8 - p1) ** 2
    )
    out = quality_focal_loss(logits, labels, scores)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # beta changes only the modulating exponent
    expected_b1 = -math.log(1 - p0) * p0 + -(0.8 * math.log(p1) + 0.2 * math.log(1 - p1)) * abs(
        0.8 - p1
    )
    assert quality_focal_loss(logits, labels, scores, beta=1.0).item() == pytest.approx(
        expected_b1, rel=1e-12
    )


def test_qfl_random_batch_matches_elementwise_formula():
    g = torch.Generator().manual_seed(0)
    n, k = 40, 5
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, k + 1, (n,), generator=g)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    for beta in (2.0, 1.5):
        expected = torch.tensor(_qfl_reference(logits, labels, scores, beta), dtype=torch.float64)
        torch.testing.assert_close(
            quality_focal_loss(logits, labels, scores, beta), expected, rtol=1e-10, atol=1e-12
        )
    # float32 agrees with the float64 formula to float32 precision
    out32 = quality_focal_loss(logits.float(), labels, scores.float())
    torch.testing.assert_close(
        out32.double(),
        torch.tensor(_qfl_reference(logits, labels, scores, 2.0), dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
    )


def test_qfl_all_background_ignores_scores():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    labels = torch.full((6,), 3)
    out = quality_focal_loss(logits, labels, torch.rand(6, generator=g))
    p = logits.sigmoid()
    expected = (torch.nn.functional.softplus(logits) * p**2).sum(1)
    torch.testing.assert_close(out, expected)
    # out-of-range ids (e.g. -1) count as background too, as in mmdetection
    torch.testing.assert_close(
        quality_focal_loss(logits, torch.full((6,), -1), torch.rand(6, generator=g)), expected
    )


def test_qfl_gradients_finite_for_extreme_logits():
    logits = torch.tensor(
        [[30.0, -30.0, 0.0], [-30.0, 30.0, 5.0], [0.0, 0.0, 0.0]], requires_grad=True
    )
    labels = torch.tensor([0, 3, 2])
    scores = torch.tensor([1.0, 0.3, 0.0])
    out = quality_focal_loss(logits, labels, scores)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_qfl_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        quality_focal_loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), torch.zeros(4))


def test_dfl_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    row = [0.0, 1.0, 2.0]
    out = distribution_focal_loss(logits, torch.tensor([0.3], dtype=torch.float64))
    assert out.item() == pytest.approx(0.7 * _ce(row, 0) + 0.3 * _ce(row, 1), rel=1e-12)
    # an integer target puts all the weight on its own bin
    out = distribution_focal_loss(logits, torch.tensor([1.0], dtype=torch.float64))
    assert out.item() == pytest.approx(_ce(row, 1), rel=1e-12)


def test_dfl_random_batch_and_gradients():
    g = torch.Generator().manual_seed(2)
    n, bins = 30, 8
    logits = (torch.randn(n, bins, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = torch.rand(n, generator=g, dtype=torch.float64) * (bins - 1 - 1e-3)
    out = distribution_focal_loss(logits, target)
    expected = []
    for row, t in zip(logits.tolist(), target.tolist()):
        left = math.floor(t)
        expected.append((left + 1 - t) * _ce(row, left) + (t - left) * _ce(row, left + 1))
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
    )
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_dfl_rejects_target_out_of_range():
    with pytest.raises(ValueError, match="target"):
        distribution_focal_loss(torch.zeros(2, 5), torch.tensor([1.0, 4.0]))


def test_giou_wrapper_matches_formula():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
    weights = torch.tensor([0.5, 2.0])
    # overlap 1, union 7, hull 9; disjoint: overlap 0, union 2, hull 3
    expected = torch.tensor([0.5 * (1 - (1 / 7 - 2 / 9)), 2.0 * (1 - (0 - 1 / 3))])
    torch.testing.assert_close(giou_loss_weighted(pred, target, weights), expected)


def test_sigmoid_focal_loss_is_fvcore():
    import fvcore.nn

    assert sigmoid_focal_loss is fvcore.nn.sigmoid_focal_loss


def test_giou_wrapper_names_non_finite_boxes():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(FloatingPointError, match="non-finite predicted boxes"):
        giou_loss_weighted(torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), target, torch.ones(1))
    with pytest.raises(AssertionError, match="bad box"):  # a finite bad box is fvcore's own error
        giou_loss_weighted(torch.tensor([[5.0, 0.0, 1.0, 10.0]]), target, torch.ones(1))
