"""Test support shipped with the package (as ``numpy.testing`` is): models whose outputs are known by construction.

Nothing here is used by detection on real data; it lets tests and benchmarks drive the real nnU-Net predictor and
the whole cascade with exactly controlled probabilities.
"""
