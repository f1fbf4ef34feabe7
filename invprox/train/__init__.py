"""Training: loops for the flow and the unrolled solver, checkpoints, resume."""

from ..checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_latest",
    "previous_path",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]
