"""Numba kernels (CPU njit and CUDA), installed as ``hpctrain.kernels``.

numba is imported by the submodules only, never here.
"""
