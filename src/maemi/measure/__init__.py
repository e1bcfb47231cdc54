"""Measurement: scale, segmentation, objects."""
