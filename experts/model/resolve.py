"""From a model name to a model: the repository first, then the built-in
architectures (seeded random weights, for benchmarks and smoke tests)."""

from __future__ import annotations

from pathlib import Path

from experts.model.architectures import ARCHITECTURES, random_weights
from experts.model.model import Model, ModelError, validate
from experts.model.repository import Repository


def resolve_model(name: str, root: Path, random: bool = False, seed: int = 0) -> Model:
    """The repository's `name`; with `random`, a built-in architecture of that name with
    seeded random weights (a repository entry of the same name wins without `random`)."""
    repo = Repository(root)
    if random:
        if name not in ARCHITECTURES:
            raise ModelError(
                f"--random-weights needs a built-in architecture ({', '.join(ARCHITECTURES)}), "
                f"got {name!r}"
            )
        meta = ARCHITECTURES[name]()
        weights = random_weights(meta, seed)
        return Model(validate(meta, weights, f"built-in {name}"), weights, None)
    if name not in repo.names() and name in ARCHITECTURES:
        raise ModelError(
            f"model {name!r} is not in the repository {root}; it is a built-in architecture: "
            f"pass --random-weights to run it with seeded random weights, or bring trained "
            f"weights with `moe-alexnet import-onnx FILE --name {name}`"
        )
    return repo.load(name)
