"""Datasets, one subpackage per concern: ``sources`` (dataset directories -> image tables), ``download``,
``synthetic`` (the phantom dataset), ``decoding`` (files -> pixels), ``caches`` (the preprocessed store),
``splits`` (patient splits, meta-splits), ``sampling`` (episodes, pairs, balanced order, batches) and
``predict_io`` (what predict and similarity read and write); ``labels`` names the findings.

Never imports :mod:`cxr_tools.models` (docs/design.md, "1. Layers").
"""
