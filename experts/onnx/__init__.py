"""ONNX import (importer.py, graph.py) and export (export.py): the `onnx` extra."""
