"""Runnable networks: a plain network and a mixture of experts compiled for an
OpenCL device behind one interface (base.py), their numpy reference, calibration."""
