"""The options of ``invprox train``, declared once: a frozen dataclass from which the command line is made.

Each field of :class:`TrainConfig` carries its default, its help text and (where the command line needs
them) its choices and parser; :func:`add_arguments` turns the fields into ``argparse`` options (``K`` ->
``--K``, ``lr_net`` -> ``--lr-net``, booleans -> flags), :func:`train_solver
<invprox.train.solver_train.train_solver>` takes the same names as keywords, and a run's ``config`` (in its
checkpoint and metrics) is :func:`dataclasses.asdict` of it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

__all__ = ["TrainConfig", "add_arguments", "RUN_KEYS"]


def _keep_every(text: str) -> Union[int, str, None]:
    if text in ("fold", "none"):
        return None if text == "none" else text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, 'fold' or 'none', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, 'fold' or 'none', got {text!r}")
    return n


def _int_list(what: str) -> Callable[[str], list]:
    """A parser of comma-separated non-negative ints (``what`` names them in its errors)."""

    def parse(text: str) -> list:
        try:
            values = [int(t) for t in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{what} are >= 0, got {text!r}")
        return values

    return parse


_levels = _int_list("level indices (0: the finest)")
_counts = _int_list("step counts")


def _opt(default: Any, help: str, parse: Optional[Callable[[str], Any]] = None, choices=None,
         metavar: Optional[str] = None) -> Any:
    meta = {"help": help, "parse": parse, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """One training job of an unrolled solver (flow, ResNet or U-Net prox); see ``invprox train --help``."""

    # data and task
    data: str = _opt("embedded", "'embedded', an image folder, or a shared data set (celeba64)")
    out: str = _opt("runs/solver", "output folder")
    task: str = _opt("denoising", "denoising, inpainting, deblurring, superresolution, compressed_sensing")
    p_missing: float = _opt(0.5, "inpainting: fraction of missing pixels", float)
    kernel: str = _opt("gaussian", "deblurring kernel", choices=("gaussian", "motion"))
    blur_std: float = _opt(2.0, "deblurring: std of the Gaussian kernel", float)
    factor: int = _opt(2, "super-resolution factor", int)
    cs_ratio: float = _opt(0.25, "compressed sensing: measurements / pixels", float)
    sigma: float = _opt(0.2, "noise std (images in [0, 1])", float)
    val_data: Optional[str] = _opt(None, "validation data (default: the 'val' split of --data); 'holdout': "
                                   "the last --n-val images of the train split")
    size: int = _opt(64, "image side", int)
    channels: int = _opt(3, "image channels", int, choices=(1, 3))
    n_train: Optional[int] = _opt(None, "use at most this many training images", int)
    n_val: Optional[int] = _opt(64, "use at most this many validation images", int)
    # the solver
    prox: str = _opt("flow", "the prox of every fold", choices=("flow", "resnet", "unet"))
    K: int = _opt(4, "number of folds", int)
    flow: Optional[str] = _opt(None, "pre-trained Glow (flow.pt of `invprox pretrain`); needed for "
                               "--prox flow")
    tied: bool = _opt(False, "flow: one flow shared by all folds")
    shrinkage: Optional[str] = _opt(None, "flow: latent prox (default: the flow's prior)",
                                    choices=("gaussian", "laplace"))
    mu_init: float = _opt(0.5, "initial step mu_k as a fraction of 1/||A||^2", float)
    lam_init: float = _opt(0.1, "flow: initial latent shrinkage lambda_k", float)
    lam_per: str = _opt("level", "flow: one lambda per multi-scale latent level, per channel of the flow's "
                        "internal tensor, or one per fold (the paper's)",
                        choices=("level", "channel", "scalar"))
    cond_y: bool = _opt(False, "flow: every coupling network also reads A^T y (the measurement in image "
                        "space) through a zero-initialised 1x1 convolution: a conditional Glow per fold")
    lam_y: bool = _opt(False, "flow: the shrinkage's lambda becomes a map over the latent read from A^T y "
                       "by a small zero-initialised network (Gaussian shrinkage, --lam-per level or channel)")
    cond_net: Optional[int] = _opt(None, "flow: the coupling networks also read N feature maps of A^T y "
                                   "computed by a small convolutional network shared by all folds "
                                   "(implies --cond-y; their injection starts at zero; trains at "
                                   "--lr-coupling)", int, metavar="N")
    untie_inverse: bool = _opt(False, "flow: each fold's g is the inverse of its own copy of the Glow "
                               "instead of f^-1: both start as the pre-trained Glow (the solver starts "
                               "as without it), then train apart: twice the flow parameters for the same "
                               "arithmetic per step")
    widen: Optional[int] = _opt(None, "flow: widen the pre-trained Glow's coupling networks to N hidden "
                                "channels before training; the new units start with zero weights into the "
                                "trained ones, so the solver starts as with the pre-trained Glow", int,
                                metavar="N")
    level_steps: Optional[list] = _opt(None, "flow: keep the first N_l flow steps of each level of the "
                                       "pre-trained Glow, e.g. 8,8,0 drops the coarsest level's steps (its "
                                       "latents are then its input, squeezed): another, cheaper flow; for "
                                       "a level the shrinkage leaves alone, where f and g cancel", _counts,
                                       metavar="N0,N1,...")
    start: str = _opt("smooth", "x_0: smoothness-regularised least squares from y, or the paper's (flow: "
                      "g(0); CNNs: A^T y)", choices=("smooth", "paper"))
    init_from: Optional[str] = _opt(
        None, "start from a trained solver.pt of the same prox with K0 <= K folds: its folds first, each "
        "further fold a copy of its last one that starts as the identity (flow: --calibrate then sets "
        "their mu_k, lambda_k); the start is the source's", metavar="SOLVER")
    calibrate: int = _opt(32, "set the start (and for the flow mu_k, lambda_k) from N training pairs "
                          "before training; 0: off", int, metavar="N")
    keep_mu: bool = _opt(False, "flow: the calibration keeps mu_k at --mu-init (sets only the start and "
                         "lambda_k)")
    keep_every: Union[int, str, None] = _opt(
        "fold", "flow engine drift policy: keep every N-th block's input, 'fold' (each fold's input, one "
        "image per fold) or 'none' (pure inversion)", _keep_every, metavar="N|fold|none")
    standard_autograd: bool = _opt(False, "flow: plain autograd instead of the engine")
    checkpoint_folds: bool = _opt(False, "baselines: torch.utils.checkpoint per fold")
    features: Optional[int] = _opt(None, "baselines: feature maps (default: the factory's)", int)
    n_blocks: Optional[int] = _opt(None, "resnet: residual blocks", int)
    depth: Optional[int] = _opt(None, "unet: levels", int)
    # optimisation
    lr_net: float = _opt(1e-5, "learning rate of the networks (paper: 1e-5)", float)
    lr_step: float = _opt(1e-2, "learning rate of mu_k, lambda_k (paper: 1e-2)", float)
    lr_split: Optional[float] = _opt(None, "flow: learning rate of the Glows' learned split priors (default: "
                                     "--lr-net; 0 keeps them as pre-trained)", float)
    lr_coupling: Optional[float] = _opt(None, "flow: learning rate of the Glows' coupling layers (default: "
                                        "--lr-net, which then sets ActNorm, the 1x1 convolutions and the "
                                        "split priors)", float)
    freeze_levels: Optional[list] = _opt(None, "flow: keep these multi-scale levels of the Glows (flow steps "
                                         "and split prior; 0: the finest) as pre-trained, e.g. 2: the "
                                         "coarsest of three, whose latents the learned shrinkage leaves "
                                         "alone (f and g cancel there)", _levels, metavar="L[,L...]")
    anchor: float = _opt(0.0, "flow: pull the Glows' weights towards those they started from (the prior) "
                         "with the gradient of (W / 2) ||theta - theta_0||^2, so that weights the loss says "
                         "little about stay near the prior instead of drifting at Adam's full rate; 0: off",
                         float, metavar="W")
    adam_eps: float = _opt(1e-8, "Adam's epsilon (torch's default 1e-8); larger values shrink the steps of "
                           "parameters whose gradients are smaller than it, instead of Adam's step of about "
                           "the learning rate whatever the gradient's size", float, metavar="EPS")
    lr_schedule: str = _opt("constant", "learning-rate schedule: constant, or a cosine decay to 0 over the "
                            "run (its budget, max steps or epochs, whichever ends it first)",
                            choices=("constant", "cosine"))
    warmup: int = _opt(0, "linear learning-rate warm-up over the first N steps (0: none)", int, metavar="N")
    clip_grad: float = _opt(1.0, "clip the gradient's global norm (0: off)", float)
    skip_nonfinite: int = _opt(0, "skip up to N steps in a row whose loss or gradient norm is not finite (no "
                               "update; each is logged and listed in the metrics), then stop with the last "
                               "good checkpoint; 0: stop at the first", int, metavar="N")
    batch: int = _opt(8, "global batch (split over the processes under torchrun)", int)
    flip: bool = _opt(False, "augment: mirror each training image left-right with probability 1/2 (drawn "
                      "from the seed and the step, so a resumed run repeats the same flips); for images "
                      "whose content is mirror-symmetric, such as faces")
    epochs: int = _opt(100, "epochs", int)
    max_steps: Optional[int] = _opt(None, "stop after this many steps in total", int)
    budget_minutes: Optional[float] = _opt(None, "stop after this many minutes of --budget-clock time in "
                                           "training steps (equal per solver)", float)
    budget_clock: str = _opt("cpu", "what the budget counts: the process's CPU time (fair on a shared CPU) "
                             "or wall time (GPU)", choices=("cpu", "wall"))
    val_every: Optional[int] = _opt(None, "validate every n steps (default: each epoch)", int)
    patience: int = _opt(5, "early stopping: validations without improvement (0: off)", int)
    seed: int = _opt(0, "seed of the model, the data order and the measurements", int)
    device: str = _opt("cpu", "cpu, cuda, cuda:1 or auto")
    channels_last: bool = _opt(False, "keep the solver's weights and the batches in channels-last memory "
                               "format (what it saves depends on the model and the machine: "
                               "benchmarks/TABLE1.md)")
    resume: bool = _opt(False, "continue from OUT/checkpoint.pt")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


#: fields that belong to a run, not to the model: on resume they are taken from the call, not the checkpoint
RUN_KEYS = ("epochs", "max_steps", "budget_minutes", "budget_clock", "val_every", "patience", "device",
            "out", "resume", "skip_nonfinite", "channels_last")


def add_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One ``--option`` per field of ``cls`` (``lr_net`` -> ``--lr-net``; booleans are flags)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
            continue
        kw: Dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if meta.get("parse") is not None:
            kw["type"] = meta["parse"]
        if meta.get("choices") is not None:
            kw["choices"] = meta["choices"]
        if meta.get("metavar") is not None:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kw)
