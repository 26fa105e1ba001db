"""The training loop behind experts/training/train.py: augmentation, optimiser and
schedule, per-epoch progress and test evaluation, and the parity check against our
numpy references. Imports torch (the `train` extra)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from experts.model.spec import parse_layers
from experts.networks.reference import forward, mixture_forward
from experts.training.nets import MixtureNet, build_model, export_weights, predict
from experts.training.report import percent_shares, routing_histogram

PAD = 2  # random-crop padding, in pixels


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image (up to PAD pixels each way) and a random
    horizontal flip, both in one gather on uint8 (N, H, W); clothes are left/right
    symmetric and slightly off-centre in the wild, so both keep the label."""
    n, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    flip = torch.rand((n, 1), generator=generator) < 0.5
    rows = dy + torch.arange(h)
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W), the float32 operations of
    experts.data.fashion_mnist.to_model_input (and so of the service's preprocessing)."""
    x = images.to(torch.float32)[:, None] / 255.0
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class Trainer:
    """One model, its optimiser and schedule, stepped one epoch at a time."""

    def __init__(self, meta: dict[str, Any], config: Any, train_images: int) -> None:
        self.meta, self.config = meta, config
        self.device = torch.device(config.device)
        self.model = build_model(meta).to(self.device, memory_format=torch.channels_last)
        self.mixture = isinstance(self.model, MixtureNet)
        if config.dropout is not None:  # training only: dropout is the identity once served
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = config.dropout
        self.steps = -(-train_images // config.batch_size)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * self.steps,
            pct_start=0.15,
            div_factor=20.0,
            final_div_factor=200.0,
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.mean = float(meta["input"]["mean"][0])
        self.std = float(meta["input"]["std"][0])

    def _param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on weight matrices and kernels only, not on biases."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() > 1]
        rest = [p for p in params if p.dim() <= 1]
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]

    def run_epoch(self, epoch: int, data: dict[str, np.ndarray], progress: bool) -> dict:
        """Train one epoch, then evaluate on the test images; returns the epoch record."""
        start = time.perf_counter()
        stats = _Stats(self.model.num_experts if self.mixture else 0)
        x_all, y_all = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
        teacher = data.get("teacher_scores")
        teacher = torch.from_numpy(teacher) if teacher is not None else None
        order = torch.randperm(len(y_all), generator=self.generator)
        bar = tqdm(
            total=self.steps,
            desc=f"{self.config.arch} {epoch + 1}/{self.config.epochs}",
            unit="batch",
            disable=not progress,
            leave=True,
        )
        self.model.train()
        if self.mixture:  # the last epochs route as inference does (see TrainConfig)
            clean = round(self.config.epochs * self.config.clean_fraction)
            self.model.noisy = epoch < self.config.epochs - clean
        for step in range(self.steps):
            rows = order[step * self.config.batch_size : (step + 1) * self.config.batch_size]
            soft = teacher[rows] if teacher is not None else None
            self._step(x_all[rows], y_all[rows], stats, soft)
            bar.update()
            if step % 20 == 0 or step == self.steps - 1:
                bar.set_postfix_str(stats.postfix())
        # Under the training's autocast: the final evaluation (and the parity) are float32.
        test = self.evaluate(data["test_x"], data["test_y"], self.config.autocast == "bf16")
        record = {"epoch": epoch + 1, **stats.record(), "test_accuracy": test["accuracy"]}
        postfix = f"{stats.postfix()} test={test['accuracy']:.4f}"
        if self.mixture:  # a gate that collapses at inference shows here, not in training
            record |= {"test_share": test["routing"]["share"], "gate_noise": self.model.noisy}
            postfix += f" test share%={percent_shares(record['test_share'])}"
        record["seconds"] = round(time.perf_counter() - start, 1)
        bar.set_postfix_str(postfix)
        bar.close()
        return record

    def _step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        stats: _Stats,
        teacher: torch.Tensor | None = None,
    ) -> None:
        # Augmented on the host with the run's generator (the same images whatever
        # the device), moved as uint8.
        x = augment(images, self.generator).to(self.device)
        x = normalise(x, self.mean, self.std)
        labels = labels.to(self.device)
        with torch.autocast(self.device.type, torch.bfloat16, self.config.autocast == "bf16"):
            if self.mixture and self.config.route_clean:
                original = normalise(images.to(self.device), self.mean, self.std)
                out = self.model(x, logits=True, route_on=original)
            else:
                out = self.model(x, logits=True)
            scores = (out.scores if self.mixture else out).float()
            loss = F.cross_entropy(scores, labels, label_smoothing=self.config.label_smoothing)
            if teacher is not None:
                loss = self._distil(loss, scores, teacher.to(self.device))
        total = loss + self.config.balance_weight * out.balance_loss if self.mixture else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.schedule.step()
        stats.add(loss, scores, labels, out if self.mixture else None)

    def _distil(
        self, task: torch.Tensor, scores: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        """(1 - a) task + a T^2 KL(teacher || student), both softmaxes at temperature T
        (T^2 keeps the soft targets' gradients on the task loss's scale)."""
        a, t = self.config.distill, self.config.temperature
        soft = F.kl_div(
            F.log_softmax(scores / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - a) * task + a * t * t * soft

    def evaluate(self, x: np.ndarray, y: np.ndarray, bf16: bool = False) -> dict[str, Any]:
        """Eval-mode top-1 accuracy on preprocessed images; for a mixture also the
        routing histogram (images per expert, share, and the largest share over k/E)."""
        scores, indices = predict(self.model, x, bf16=bf16)
        result: dict[str, Any] = {"accuracy": round(float((scores.argmax(1) == y).mean()), 4)}
        if indices is not None:
            result["routing"] = routing_histogram(indices, self.model.num_experts)
        return result

    def parity(self, x: np.ndarray) -> dict[str, Any]:
        """The exported weights run by our numpy reference against torch: proof that
        the saved model computes what was trained."""
        weights = export_weights(self.model)
        scores, indices = predict(self.model, x)
        if self.mixture:
            want, want_indices, _ = mixture_forward(self.meta, weights, x)
        else:
            want, want_indices = forward(parse_layers(self.meta["layers"]), weights, x), None
        return {
            "images": len(x),
            "max_abs_diff": float(np.abs(scores - want).max()),
            "same_top1": bool((scores.argmax(1) == want.argmax(1)).all()),
            **({"same_routing": bool((indices == want_indices).all())} if self.mixture else {}),
        }


class _Stats:
    """Running loss, accuracy, balance loss and routing counts of one epoch."""

    def __init__(self, num_experts: int) -> None:
        self.loss = self.balance = 0.0
        self.correct = self.seen = self.steps = 0
        self.counts = np.zeros(num_experts, np.int64)

    def add(self, loss: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, out: Any) -> None:
        self.steps += 1
        self.loss += float(loss.detach())
        self.correct += int((scores.argmax(1) == labels).sum())
        self.seen += len(labels)
        if out is not None:
            self.balance += float(out.balance_loss.detach())
            routed = out.indices.reshape(-1).cpu().numpy()
            self.counts += np.bincount(routed, minlength=len(self.counts))

    def shares(self) -> list[float]:
        return (self.counts / max(int(self.counts.sum()), 1)).round(4).tolist()

    def postfix(self) -> str:
        text = (
            f"loss={self.loss / max(self.steps, 1):.4f} acc={self.correct / max(self.seen, 1):.4f}"
        )
        if len(self.counts):
            share = percent_shares(self.shares())
            text += f" bal={self.balance / max(self.steps, 1):.3f} share%={share}"
        return text

    def record(self) -> dict[str, Any]:
        out = {
            "loss": round(self.loss / max(self.steps, 1), 4),
            "train_accuracy": round(self.correct / max(self.seen, 1), 4),
        }
        if len(self.counts):
            out["balance_loss"] = round(self.balance / max(self.steps, 1), 4)
            out["train_share"] = self.shares()
        return out
