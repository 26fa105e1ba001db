"""The training loop's pieces (experts/training/loop.py): augmentation within the
padding, normalisation as the engine's input, and the distillation loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")

from experts.data.fashion_mnist import to_model_input  # noqa: E402
from experts.model.architectures import FASHION_INPUT  # noqa: E402
from experts.training.loop import augment, normalise  # noqa: E402


def test_augment_crops_and_flips_within_padding():
    gen = torch.Generator().manual_seed(0)
    base = torch.from_numpy(np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8))
    out = augment(base.repeat(200, 1, 1), gen)
    assert out.shape == (200, 28, 28) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(base, (2, 2, 2, 2))
    variants = {
        (dy, dx, flip): (
            padded[dy : dy + 28, dx : dx + 28].flip(1)
            if flip
            else padded[dy : dy + 28, dx : dx + 28]
        )
        for dy in range(5)
        for dx in range(5)
        for flip in (False, True)
    }
    hits = {next(key for key, v in variants.items() if torch.equal(v, img)) for img in out}
    assert len(hits) > 30  # both flips and many offsets occur


def test_normalise_matches_to_model_input():
    raw = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    x = normalise(torch.from_numpy(raw), FASHION_INPUT["mean"][0], FASHION_INPUT["std"][0])
    np.testing.assert_array_equal(x.numpy(), to_model_input(raw, FASHION_INPUT))


def test_distillation_loss():
    """distill 0 is the task loss alone; a student that already scores as its teacher
    adds nothing; one that does not adds a positive KL term."""
    from types import SimpleNamespace

    from experts.training.loop import Trainer

    scores = torch.randn(8, 10)
    task = torch.tensor(1.5)
    for a in (0.0, 0.5):
        fake = SimpleNamespace(config=SimpleNamespace(distill=a, temperature=4.0))
        same = Trainer._distil(fake, task, scores, scores.clone())
        assert float(same) == pytest.approx((1 - a) * 1.5, abs=1e-6)
        other = Trainer._distil(fake, task, scores, torch.randn(8, 10))
        assert float(other) > float(same) if a else float(other) == float(same)
