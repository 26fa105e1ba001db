"""The mixture of experts: its model.json parts, routing, and numpy reference.

A mixture's model.json has `"kind": "mixture"` and, instead of `layers`:

- `stem`: layers run on every image (conv1, relu, pool, LRN);
- `gate`: layers on the stem's output ending in E logits;
- `expert`: the layers of one expert (conv2 .. fc7), on the stem's output, ending
  in a flat feature vector of size D; there are `experts` (E) of them, each with
  its own weights;
- `head`: layers on the gate-weighted sum of the chosen experts' features (fc8,
  optionally softmax);
- `k`: how many experts each image is sent to by default (1 <= k <= E).

Weights are named `stem.<layer>.*`, `gate.<layer>.*`, `experts.<i>.<layer>.*` and
`head.<layer>.*`. Routing: softmax over the gate's logits, the k largest kept (ties to
the lower expert index, so decisions are deterministic) and renormalised to sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experts.reference_network import forward
from experts.spec import SpecError, expected_params, infer_shapes, normalise_layers

PARTS = ("stem", "gate", "expert", "head")


def is_mixture(meta: dict[str, Any]) -> bool:
    return meta.get("kind") == "mixture"


@dataclass(frozen=True)
class MixtureSpec:
    """The checked parts of a mixture and the shapes between them."""

    stem: list[dict[str, Any]]
    gate: list[dict[str, Any]]
    expert: list[dict[str, Any]]
    head: list[dict[str, Any]]
    experts: int
    k: int
    input_shape: tuple[int, ...]
    stem_shape: tuple[int, ...]
    features: int
    num_classes: int

    def check_k(self, k: int | None) -> int:
        """The k to use: the model's own when None; 1 <= k <= E or a SpecError."""
        if k is None:
            return self.k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.experts:
            raise SpecError(f"k (experts per image) must be between 1 and {self.experts}, got {k}")
        return k


def mixture_spec(meta: dict[str, Any]) -> MixtureSpec:
    """Check a mixture's parts fit together; errors name the part."""
    for part in (*PARTS, "experts"):
        if part not in meta:
            raise SpecError(f"mixture: missing {part!r}")
    parts = {}
    for part in PARTS:
        try:
            parts[part] = normalise_layers(meta[part])
        except SpecError as exc:
            raise SpecError(f"mixture {part}: {exc}") from exc
    e = meta["experts"]
    if not isinstance(e, int) or isinstance(e, bool) or e < 1:
        raise SpecError(f"mixture: experts must be a positive integer, got {e!r}")
    input_shape = tuple(int(s) for s in meta["input"]["shape"])
    stem_shape = _shapes(parts["stem"], input_shape, "stem")[-1]
    gate_out = _shapes(parts["gate"], stem_shape, "gate")[-1]
    if gate_out != (e,):
        raise SpecError(f"mixture gate: must end in {e} logits (one per expert), gives {gate_out}")
    expert_out = _shapes(parts["expert"], stem_shape, "expert")[-1]
    if len(expert_out) != 1:
        raise SpecError(f"mixture expert: must end in a flat feature vector, gives {expert_out}")
    head_out = _shapes(parts["head"], expert_out, "head")[-1]
    if len(head_out) != 1:
        raise SpecError(f"mixture head: must end in class scores, gives {head_out}")
    spec = MixtureSpec(parts["stem"], parts["gate"], parts["expert"], parts["head"], e, 1,
                       input_shape, stem_shape, expert_out[0], head_out[0])  # fmt: skip
    k = meta.get("k", 1)
    try:
        spec.check_k(k)
    except SpecError as exc:
        raise SpecError(f"mixture: {exc}") from exc
    return MixtureSpec(**{**spec.__dict__, "k": k})


def _shapes(layers: list[dict[str, Any]], shape: tuple[int, ...], part: str) -> list:
    try:
        return infer_shapes(layers, shape)
    except SpecError as exc:
        raise SpecError(f"mixture {part}: {exc} (input {shape})") from exc


def mixture_params(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight tensor a mixture needs, with its shape."""
    spec = mixture_spec(meta)
    params: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, layers: list, shape: tuple[int, ...]) -> None:
        for key, value in expected_params(layers, shape).items():
            params[f"{prefix}.{key}"] = value

    add("stem", spec.stem, spec.input_shape)
    add("gate", spec.gate, spec.stem_shape)
    for i in range(spec.experts):
        add(f"experts.{i}", spec.expert, spec.stem_shape)
    add("head", spec.head, (spec.features,))
    return params


def part_weights(weights: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors under `prefix.`, with the prefix removed (as a plain network names them)."""
    cut = len(prefix) + 1
    return {key[cut:]: value for key, value in weights.items() if key.startswith(prefix + ".")}


def route(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k routing: (indices, weights), each (N, k).

    Softmax over the gate logits, the k largest kept (a stable sort: ties go to the
    lower index) and renormalised, which equals a softmax over the k kept logits.
    """
    z = logits.astype(np.float64)
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(z, order, axis=1)
    w = np.exp(top - top[:, :1])
    return order.astype(np.int32), (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def reference_forward(
    meta: dict[str, Any], weights: dict[str, np.ndarray], x: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole mixture in numpy, every expert on every image (the dense oracle the
    sparse engine is tested against). Returns (scores, expert indices, gate weights)."""
    spec = mixture_spec(meta)
    k = spec.check_k(k)
    stem = forward(spec.stem, part_weights(weights, "stem"), x).reshape(len(x), *spec.stem_shape)
    indices, gates = route(forward(spec.gate, part_weights(weights, "gate"), stem), k)
    features = np.stack(
        [
            forward(spec.expert, part_weights(weights, f"experts.{i}"), stem)
            for i in range(spec.experts)
        ]
    )  # fmt: skip  (E, N, D)
    n = np.arange(len(x))[:, None]
    merged = (features[indices, n] * gates[:, :, None].astype(np.float64)).sum(axis=1)
    scores = forward(spec.head, part_weights(weights, "head"), merged.astype(np.float32))
    return scores, indices, gates
