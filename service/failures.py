"""The failures that are the user's input or environment (a bad file, an unknown
model, no OpenCL device): the command line reports them in one line, the server
logs them without a traceback."""

from __future__ import annotations

from experts.data.fashion_mnist import DatasetError
from experts.layers import SpecError
from experts.model.model import ModelError
from experts.onnx.errors import OnnxImportError
from experts.training.train import TrainingError
from kernels.devices import DeviceError, KernelError
from service.images import InputError


class UsageError(ValueError):
    """A command used in a way it cannot run (one line on stderr, status 1)."""


EXPECTED: tuple[type[BaseException], ...] = (
    UsageError,
    ModelError,
    SpecError,
    DeviceError,
    KernelError,
    InputError,
    DatasetError,
    OnnxImportError,
    TrainingError,
    OSError,
)
