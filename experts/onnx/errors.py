"""The ONNX importer's error, importable without onnx installed (the command line
lists it among the failures it reports in one line)."""


class OnnxImportError(ValueError):
    """An ONNX model the engine cannot run exactly; the message says where and why."""
