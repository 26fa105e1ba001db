"""Training with PyTorch (the `train` extra): train.py runs a recipe, nets.py builds
the torch modules from model.json, loop.py steps them, report.py summarises a run."""
