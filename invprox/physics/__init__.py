"""Forward operators of imaging inverse problems and the invertible data-consistency step.

Operators (``A``, ``A_adjoint``, ``AtA``, ``norm_sq``, ``measure``): :class:`Denoising`,
:class:`Inpainting`, :class:`Deblurring`, :class:`SuperResolution`, :class:`CompressedSensing`, or
:func:`make_physics` by task name. The DC step ``x - mu A^T (A x - y)`` (:func:`dc_step`), its exact
inverse (:func:`dc_inverse`) and log-determinant (:func:`dc_logdet`) work for these and for any object
with ``A`` and ``A_adjoint`` (conjugate-gradient fallback). :class:`DataConsistency` is the step as an
engine block with a learned step size.
"""

from .base import Denoising, LinearOperator, dc_solve_cg, gaussian_noise, logdet_from_eigenvalues
from .blur import Deblurring, SuperResolution
from .compressed_sensing import CompressedSensing
from .data_consistency import DataConsistency
from .dc import check_step_size, dc_inverse, dc_logdet, dc_step, operator_norm_sq
from .factory import TASKS, canonical_task, make_physics
from .inpainting import Inpainting, box_mask, random_mask
from .kernels import gaussian_kernel, kernel_fft, motion_kernel
from .linalg import batch_dot, batch_view, conjugate_gradient, gram_eigenvalues, power_iteration

__all__ = [
    "TASKS",
    "canonical_task",
    "CompressedSensing",
    "DataConsistency",
    "Deblurring",
    "Denoising",
    "Inpainting",
    "LinearOperator",
    "SuperResolution",
    "batch_dot",
    "batch_view",
    "box_mask",
    "check_step_size",
    "conjugate_gradient",
    "dc_inverse",
    "dc_logdet",
    "dc_solve_cg",
    "dc_step",
    "gaussian_kernel",
    "gaussian_noise",
    "gram_eigenvalues",
    "kernel_fft",
    "logdet_from_eigenvalues",
    "make_physics",
    "motion_kernel",
    "operator_norm_sq",
    "power_iteration",
    "random_mask",
]
