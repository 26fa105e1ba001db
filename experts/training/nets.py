"""PyTorch modules built from our JSON specs, for training (the `train` extra).

The modules are generated from the same layer lists the OpenCL engine runs, one torch
module per layer (each op's `torch_module`), so the exported weights drop into
model.json's network without any renaming or reshaping and the trained network is
exactly the one that is served. Importing this module needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experts.layers import Layer
from experts.layers.softmax import Softmax
from experts.model.mixture import is_mixture, mixture_spec
from experts.model.spec import infer_shapes, parse_layers


def _init(module: nn.Module, relu: bool) -> None:
    """He initialisation for layers followed by a ReLU (there is no batch norm, so
    keeping the activation scale per layer is what lets the net train from step one);
    small weights for the score layers (class logits, gate logits), so training starts
    from near-uniform predictions and near-uniform routing."""
    if relu:
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    else:
        nn.init.normal_(module.weight, std=0.01)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class SpecNet(nn.Module):
    """A plain layer list as a torch module; `names[i]` is the spec name of `layers[i]`
    (kept apart because spec names may contain dots, which torch does not allow)."""

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int]) -> None:
        super().__init__()
        self.spec = list(layers)
        self.input_shape = tuple(int(s) for s in input_shape)
        shapes = [self.input_shape, *infer_shapes(self.spec, self.input_shape)]
        self.output_shape = shapes[-1]
        self.names = [layer.name for layer in self.spec]
        self.relu = [layer.fuses_relu and layer.relu for layer in self.spec]
        self.layers = nn.ModuleList(
            layer.torch_module(shape) for layer, shape in zip(self.spec, shapes, strict=False)
        )
        for layer, module, relu in zip(self.spec, self.layers, self.relu, strict=True):
            if layer.weighted:
                _init(module, relu)
        self.ends_in_softmax = isinstance(self.spec[-1], Softmax)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """The spec's output; `logits=True` stops before a final softmax (the training
        loss wants logits, the engine returns what the spec says)."""
        last = len(self.layers) - 1 if logits and self.ends_in_softmax else len(self.layers)
        for module, relu in zip(self.layers[:last], self.relu[:last], strict=True):
            x = module(x)
            if relu:
                x = F.relu(x)
        return x

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Tensors under our weight names: `<layer>.weight`, `<layer>.bias`."""
        out = {}
        for name, module in zip(self.names, self.layers, strict=True):
            for key in ("weight", "bias"):
                tensor = getattr(module, key, None)
                if isinstance(tensor, torch.Tensor):
                    out[f"{name}.{key}"] = tensor
        return out


class MixtureOutput(NamedTuple):
    """Scores (the head's output), the load-balancing loss, each image's experts and
    their weights, and the noise-free gate probabilities (N, E)."""

    scores: torch.Tensor
    balance_loss: torch.Tensor
    indices: torch.Tensor
    gates: torch.Tensor
    probs: torch.Tensor


class MixtureNet(nn.Module):
    """A mixture's stem, gate, E experts and head (experts/model/mixture.py's format).

    Eval mode routes exactly as the engine's `route` (experts/networks/reference.py):
    softmax over the gate logits, the k largest kept (stable sort: ties to the lower
    index), renormalised. Training mode adds Shazeer et al.'s noisy gating:
    logits + N(0, 1) * softplus(W_noise h), with h the flattened stem output and
    W_noise a training-only layer (zero-initialised: noise std softplus(0) = 0.69 at
    the start, then learnt); it is not exported. Setting `noisy` False routes training
    batches without noise, as inference will (the trainer does so for the last
    epochs). Both modes run each expert only on the
    images routed to it.
    """

    def __init__(self, meta: dict[str, Any], k: int | None = None) -> None:
        super().__init__()
        spec = mixture_spec(meta)
        self.k = spec.check_k(k)
        self.num_experts = spec.experts
        self.stem = SpecNet(spec.stem, spec.input_shape)
        self.gate = SpecNet(spec.gate, spec.stem_shape)
        self.experts = nn.ModuleList(
            SpecNet(spec.expert, spec.stem_shape) for _ in range(spec.experts)
        )
        self.head = SpecNet(spec.head, (spec.features,))
        self.noise = nn.Linear(math.prod(spec.stem_shape), spec.experts)
        nn.init.zeros_(self.noise.weight)
        nn.init.zeros_(self.noise.bias)
        self.noisy = True

    def forward(
        self, x: torch.Tensor, logits: bool = False, route_on: torch.Tensor | None = None
    ) -> MixtureOutput:
        """`route_on`, training only: other images to route by (the un-augmented
        originals of `x`), so the gate learns on what it will see when served."""
        stem = self.stem(x)
        routed = stem if route_on is None else self.stem(route_on)
        clean = self.gate(routed)
        noisy = clean
        if self.training and self.noisy:
            std = F.softplus(self.noise(routed.flatten(1)))
            noisy = clean + torch.randn_like(clean) * std
        indices, gates = self.route(noisy, torch.softmax(noisy, dim=1))
        scores = self.head(self.combine(stem, indices, gates), logits=logits)
        probs = torch.softmax(clean, dim=1)
        balance = self.balance(probs, None if self.training else indices)
        return MixtureOutput(scores, balance, indices, gates, probs)

    def balance(self, probs: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """The load-balancing loss of the noise-free routing, which is what ships: on
        the noisy routing, W_noise could lower it by drowning the gate in noise while
        the deployed gate stays unbalanced."""
        if indices is None:
            indices = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, : self.k]
        return balance_loss(probs, indices, self.num_experts)

    def route(self, gate_logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Top-k experts and their renormalised weights, as the engine's `route`.

        With k = 1 the renormalised weight is the constant 1, so the task loss would
        give the gate no gradient at all; adding p - p.detach() (zero in value) gives it
        the Switch Transformer's gradient, as if the expert output were scaled by p.
        """
        order = torch.sort(gate_logits, dim=1, descending=True, stable=True).indices
        indices = order[:, : self.k]
        gates = torch.softmax(gate_logits.gather(1, indices), dim=1)
        if self.training and self.k == 1:
            chosen = probs.gather(1, indices)
            gates = gates + (chosen - chosen.detach())
        return indices, gates

    def combine(
        self, stem: torch.Tensor, indices: torch.Tensor, gates: torch.Tensor
    ) -> torch.Tensor:
        """Gate-weighted sum of the chosen experts' features; each expert runs once on
        the images that chose it (sparse, as the OpenCL engine runs it)."""
        merged = stem.new_zeros((len(stem), self.head.input_shape[0]))
        for e, expert in enumerate(self.experts):
            hit = indices == e
            rows = hit.any(dim=1).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            weight = (gates * hit).sum(dim=1)[rows]
            merged = merged.index_add(0, rows, expert(stem[rows]) * weight[:, None])
        return merged

    def parts(self) -> dict[str, SpecNet]:
        """The exported sub-networks under their weight-name prefixes."""
        named = {"stem": self.stem, "gate": self.gate, "head": self.head}
        named.update({f"experts.{i}": expert for i, expert in enumerate(self.experts)})
        return named


def balance_loss(probs: torch.Tensor, indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch Transformer load balancing: E * sum_e f_e * P_e.

    f_e is the fraction of routing slots sent to expert e (no gradient: it counts), P_e
    the mean gate probability of e (differentiable). Both are 1/E when routing is
    uniform, giving the minimum 1; sending everything to one expert gives up to E.
    Chosen over Shazeer's CV^2(importance) + CV^2(load) because it is a single term that
    works for top-1 without the noise-CDF estimate of the load, and it penalises exactly
    what the product caps: the share of images each expert receives.
    """
    counts = torch.zeros(num_experts, dtype=probs.dtype, device=probs.device)
    counts = counts.index_add(
        0, indices.reshape(-1), torch.ones_like(indices.reshape(-1), dtype=probs.dtype)
    )
    fraction = counts / indices.numel()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def build_model(meta: dict[str, Any]) -> SpecNet | MixtureNet:
    """The torch module for a model.json: a MixtureNet for a mixture, else a SpecNet."""
    if is_mixture(meta):
        return MixtureNet(meta)
    return SpecNet(parse_layers(meta["layers"]), meta["input"]["shape"])


def _named_weights(model: SpecNet | MixtureNet) -> dict[str, torch.Tensor]:
    if isinstance(model, SpecNet):
        return model.named_weights()
    out = {}
    for prefix, part in model.parts().items():
        out.update({f"{prefix}.{key}": value for key, value in part.named_weights().items()})
    return out


def export_weights(model: SpecNet | MixtureNet) -> dict[str, np.ndarray]:
    """The trained tensors under our names, float32 (training-only layers left out)."""
    return {
        key: np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.float32)
        for key, value in _named_weights(model).items()
    }


def load_weights(model: SpecNet | MixtureNet, weights: dict[str, np.ndarray]) -> None:
    """Copy weights named as in weights.safetensors into the module (e.g. to go on
    training a saved model, or to run a repository model in torch)."""
    params = _named_weights(model)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise KeyError(f"missing weight tensors {missing}")
    with torch.no_grad():
        for key, tensor in params.items():
            tensor.copy_(torch.from_numpy(np.asarray(weights[key], dtype=np.float32)))


def predict(
    model: SpecNet | MixtureNet, x: np.ndarray, batch_size: int = 500, bf16: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Eval-mode scores (N, classes) and, for a mixture, expert indices (N, k);
    `bf16` runs the forward pass under bfloat16 autocast (a quick estimate)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    scores, indices = [], []
    try:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, bf16):
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
                out = model(batch.to(device))
                if isinstance(out, MixtureOutput):
                    indices.append(out.indices.cpu().numpy().astype(np.int32))
                    out = out.scores
                scores.append(out.float().cpu().numpy())
    finally:
        model.train(was_training)
    routed = np.concatenate(indices) if indices else None
    return np.concatenate(scores).astype(np.float32), routed


def torch_predictions(
    model: SpecNet | MixtureNet, x: np.ndarray, batch_size: int = 500
) -> np.ndarray:
    """Eval-mode scores (N, classes) of preprocessed float32 images (N, C, H, W): what
    the engine should return for the exported weights (the parity oracle of eval)."""
    return predict(model, x, batch_size)[0]
