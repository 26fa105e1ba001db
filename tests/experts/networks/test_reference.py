"""The numpy reference's routing (experts/networks/reference.py: route): top-k with ties
to the lower index, gates renormalised over the chosen experts."""

from __future__ import annotations

import numpy as np

from experts.networks.reference import route


def test_route_ties_and_renormalisation():
    logits = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    indices, gates = route(logits, 2)
    assert indices.tolist() == [[1, 2], [0, 1]]  # ties go to the lower index
    np.testing.assert_allclose(gates, [[0.5, 0.5], [0.5, 0.5]])
    indices, gates = route(np.array([[0.0, np.log(3.0)]], np.float32), 2)
    np.testing.assert_allclose(gates, [[0.75, 0.25]], rtol=1e-6)
    assert indices.tolist() == [[1, 0]]
