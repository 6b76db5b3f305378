"""Datasets: labels, sources, download, imaging, caches, splits, sampling, torch datasets.

Never imports :mod:`cxr_tools.models`.
"""
