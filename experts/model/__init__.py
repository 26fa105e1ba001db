"""The model format: layer lists and mixtures as model.json gives them, the checked
in-memory model, the repository on disk, calibration files and built-in
architectures."""
