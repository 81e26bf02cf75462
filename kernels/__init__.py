"""Triton kernels and their launchers, shipped as ``fused_unet.kernels``.

This package itself imports nothing from Triton: ``checks`` is plain PyTorch, so the eager fallback and
input validation work on machines without Triton. ``conv`` and ``pool`` import Triton and decorate their
kernels when first imported, which is when ``TRITON_INTERPRET`` is read.
"""
import os


def interpreter_requested():
    """Whether TRITON_INTERPRET asks for the Triton interpreter (Triton reads it when a kernel is decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
