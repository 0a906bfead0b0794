"""Calibration data, losses, and the context a model-based method runs in."""
