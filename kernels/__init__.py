"""Triton kernels and their launchers, shipped as ``fused_unet.kernels``.

This package itself imports nothing from Triton: ``checks`` is plain PyTorch, so the eager fallback and
input validation work on machines without Triton. ``conv`` and ``pool`` import Triton and decorate their
kernels when first imported, which is when ``TRITON_INTERPRET`` is read.
"""
import os


def interpreter_requested():
    """Whether TRITON_INTERPRET asks for the Triton interpreter (Triton reads it when a kernel is decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _version(text):
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


def interpreter_problem():
    """Why the installed Triton's interpreter cannot run here, or None. Triton 3.6's interpreter turns 1-element
    arrays into ints with int(), which NumPy 2.4 made an error."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton_version, numpy_version = version("triton"), version("numpy")
    except PackageNotFoundError:
        return "Triton is not installed"
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"the Triton {triton_version} interpreter does not run with NumPy {numpy_version}: "
                "install numpy<2.4, or triton>=3.8")
    return None
