"""fused-unet: Triton kernels that fuse the hot paths of a U-Net, with autograd, drop-in modules and a U-Net."""
from fused_unet import candidates, functional, nn
from fused_unet.dispatch import backend, describe, force_eager, interpreter_enabled
from fused_unet.models import ReferenceUNet, UNet
from fused_unet.static_plan import plan
from fused_unet.swap import SwapReport, swap, swap_modules

__version__ = "0.1.0"
__all__ = ["UNet", "ReferenceUNet", "SwapReport", "backend", "candidates", "describe", "force_eager",
           "interpreter_enabled", "functional", "nn", "plan", "swap", "swap_modules"]
