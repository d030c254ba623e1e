"""Calibration data and INT8 recipes."""
