"""The mixture of experts as model.json describes it: its parts and their shapes.

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
`head.<layer>.*`. Routing (experts/networks/reference.py has its twin): softmax over
the gate's logits, the k largest kept (ties to the lower expert index, so decisions
are deterministic) and renormalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from experts.layers import Layer, Shape, SpecError
from experts.model.spec import expected_params, infer_shapes, parse_layers

PARTS = ("stem", "gate", "expert", "head")


def is_mixture(meta: dict[str, Any]) -> bool:
    return meta.get("kind") == "mixture"


@dataclass(frozen=True)
class MixtureSpec:
    """The checked parts of a mixture and the shapes between them."""

    stem: list[Layer]
    gate: list[Layer]
    expert: list[Layer]
    head: list[Layer]
    experts: int
    k: int
    input_shape: Shape
    stem_shape: Shape
    features: int
    num_classes: int

    def check_k(self, k: Any) -> int:
        """The k to use: the model's own when None; 1 <= k <= E or a SpecError."""
        if k is None:
            return self.k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.experts:
            raise SpecError(
                f"k (experts per image) must be an integer between 1 and {self.experts}, got {k!r}"
            )
        return k


def check_k(mixture: MixtureSpec | None, k: Any) -> int | None:
    """The one check of k (experts per image), for any model: the mixture's own k when
    None, 1 <= k <= E otherwise; a plain network (`mixture` None) takes none."""
    if mixture is not None:
        return mixture.check_k(k)
    if k is not None:
        raise SpecError("k (experts per image) applies only to mixture-of-experts models")
    return None


def mixture_spec(meta: dict[str, Any]) -> MixtureSpec:
    """Check a mixture's parts fit together; errors name the part."""
    for part in (*PARTS, "experts"):
        if part not in meta:
            raise SpecError(f"mixture: missing {part!r}")
    parts = {}
    for part in PARTS:
        try:
            parts[part] = parse_layers(meta[part])
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
    spec = MixtureSpec(
        parts["stem"],
        parts["gate"],
        parts["expert"],
        parts["head"],
        e,
        1,
        input_shape,
        stem_shape,
        expert_out[0],
        head_out[0],
    )
    k = meta.get("k", 1)
    try:
        spec.check_k(k)
    except SpecError as exc:
        raise SpecError(f"mixture: {exc}") from exc
    return replace(spec, k=k)


def _shapes(layers: list[Layer], shape: Shape, part: str) -> list[Shape]:
    try:
        return infer_shapes(layers, shape)
    except SpecError as exc:
        raise SpecError(f"mixture {part}: {exc} (input {shape})") from exc


def mixture_params(meta: dict[str, Any]) -> dict[str, Shape]:
    """Every weight tensor a mixture needs, with its shape."""
    spec = mixture_spec(meta)
    params: dict[str, Shape] = {}

    def add(prefix: str, layers: list[Layer], shape: Shape) -> None:
        for key, value in expected_params(layers, shape).items():
            params[f"{prefix}.{key}"] = value

    add("stem", spec.stem, spec.input_shape)
    add("gate", spec.gate, spec.stem_shape)
    for i in range(spec.experts):
        add(f"experts.{i}", spec.expert, spec.stem_shape)
    add("head", spec.head, (spec.features,))
    return params


def part_weights(weights: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors under `prefix.`, with the prefix removed (as a plain network names them)."""
    cut = len(prefix) + 1
    # Keys first: weights read lazily (experts/model/tensors.py) are read only if taken.
    return {key[cut:]: weights[key] for key in weights if key.startswith(prefix + ".")}
