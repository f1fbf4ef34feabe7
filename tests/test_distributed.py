"""DistributedDataParallel through the engine: 2 processes on halves of a global batch == 1 process on all.

Two processes are spawned (``torch.multiprocessing``, gloo, a ``file://`` rendezvous in ``tmp_path``: no
network port, works offline). Each trains a tiny float64 FlowProxSolver (its K folds one InvertibleChain)
for 3 steps with SGD and with Adam, wrapped in DDP with its default settings (no
``find_unused_parameters``, buffers broadcast at every forward). The parameters must equal those of one
process trained on the whole global batch (same global batches, via ``make_loader``) to 1e-10, with the
engine and with standard autograd. The workers also check the helpers (rank-0 checkpoint, parameter
broadcast) and the data-dependent-initialisation pitfall of DDP (ActNorm initialised per rank).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from invprox import distributed as D
from invprox import testing
from invprox.flows import Glow
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver

D64 = torch.float64
WORLD = 2
PER_RANK = 2  # samples per step and process; global batch 4
STEPS = 3  # spans two epochs of the 8-sample data set (set_epoch is exercised)
OPTIMIZERS = ("sgd", "adam")


def _glow(seed: int = 0, init: bool = True) -> Glow:
    torch.manual_seed(seed)
    g = Glow(in_channels=1, image_size=4, levels=1, steps=1, hidden=3).to(D64)
    testing.randomize_parameters(g, 0.2, seed=seed)
    if init:  # ActNorm's data-dependent init, done before any wrapping (as pre-training would)
        with torch.no_grad():
            g(torch.rand(4, 1, 4, 4, dtype=D64, generator=torch.Generator().manual_seed(seed)) - 0.5)
    return g


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 4, 4, generator=gen, dtype=D64)
    y = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=D64)
    return TensorDataset(y, x)


def _train(opt_name: str, batch: int, memory_efficient: bool = True) -> FlowProxSolver:
    # the paper's start (the mode, the same for every image): with the smooth start, one fold's step mu
    # gets a near-zero gradient here, whose rounding Adam's normalisation lifts above 1e-10
    solver = FlowProxSolver(_glow(), make_physics("denoising", (1, 4, 4)), K=2, start="mode",
                            memory_efficient=memory_efficient)
    model = D.wrap_ddp(solver)
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = D.make_loader(_data(), batch, shuffle=True, seed=3)
    step, epoch = 0, 0
    while step < STEPS:
        D.set_epoch(loader, epoch)
        for y, x in loader:
            loss = (model(y) - x).square().mean()  # local mean; DDP averages over ranks
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    return solver


def _worker(rank: int, world: int, tmp: str) -> None:
    # a worker that hangs dumps its Python stacks on SIGUSR1 (what _spawn's timeout reports)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=open(os.path.join(tmp, f"stacks{rank}.txt"), "w"),
                              all_threads=True)
    torch.set_num_threads(1)
    info = D.init_distributed("gloo", f"file://{tmp}/rendezvous", rank=rank, world_size=world, timeout_s=60)
    assert (info.rank, info.world_size, info.backend) == (rank, world, "gloo")
    out = {}
    for name in OPTIMIZERS:
        solver = _train(name, PER_RANK)
        out[name] = {k: v.clone() for k, v in solver.state_dict().items()}
        out[name + "_diff"] = D.max_parameter_difference(solver)
    ckpt = D.save_on_main(os.path.join(tmp, "ckpt.pt"), {"solver": out["adam"]})
    assert (ckpt is not None) == (rank == 0)
    # every rank can read the file once save_on_main returns
    from invprox.checkpoint import load_checkpoint

    loaded = load_checkpoint(os.path.join(tmp, "ckpt.pt"))["solver"]
    out["ckpt_ok"] = all(torch.equal(loaded[k], v) for k, v in out["adam"].items())

    # pitfall: ActNorm initialised in the first DDP forward, separately on each rank's data
    solver = FlowProxSolver(_glow(init=False), make_physics("denoising", (1, 4, 4)), K=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = D.wrap_ddp(solver)
    out["warned"] = any("initialise from data" in str(w.message) for w in caught)
    y = _data().tensors[0][rank * PER_RANK : (rank + 1) * PER_RANK]
    model(y).square().mean().backward()
    out["diverged"] = D.max_parameter_difference(solver)
    D.broadcast_module(model)
    out["after_broadcast"] = D.max_parameter_difference(solver)
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    del model  # before cleanup: the DDP reducer must not hold the process group's last reference
    D.cleanup()


def _start_method() -> str:
    # fork: the workers inherit the imported modules (torch, invprox, the optimizers' torch._dynamo),
    # which saves ~4 s of CPU per worker over spawn. Safe here: CPU only, no process group or thread
    # pool in the parent (conftest sets one torch thread). spawn where fork is missing or CUDA is live.
    if "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _stacks(processes, tmp: str) -> str:
    """The Python stacks of the workers still alive (faulthandler, on SIGUSR1)."""
    for p in processes:
        if p.is_alive() and hasattr(signal, "SIGUSR1"):
            os.kill(p.pid, signal.SIGUSR1)
    time.sleep(1.0)
    out = []
    for rank, p in enumerate(processes):
        path = os.path.join(tmp, f"stacks{rank}.txt")
        text = open(path).read() if os.path.exists(path) else "(no stack file)"
        out.append(f"rank {rank} ({'alive' if p.is_alive() else f'exit {p.exitcode}'}):\n{text}")
    return "\n".join(out)


def _spawn(tmp: str, timeout: float = 120.0) -> None:
    ctx = mp.start_processes(_worker, args=(WORLD, tmp), nprocs=WORLD, join=False,
                             start_method=_start_method())
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers did not finish in {timeout} s; their stacks:\n"
                                   + _stacks(ctx.processes, tmp))
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()


@pytest.fixture(scope="module")
def references():
    """One process on the whole global batch: with the engine and with standard autograd."""
    return {
        (name, eff): _train(name, PER_RANK * WORLD, memory_efficient=eff).state_dict()
        for name in OPTIMIZERS
        for eff in (True, False)
    }


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory, references):  # references first: the workers fork warm
    tmp = tmp_path_factory.mktemp("ddp")
    _spawn(str(tmp))
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_ddp_two_processes_equal_one_process_on_global_batch(ddp_results, references, opt_name):
    results = ddp_results
    ref_engine, ref_plain = references[opt_name, True], references[opt_name, False]
    start = FlowProxSolver(_glow(), make_physics("denoising", (1, 4, 4)), K=2, start="mode").state_dict()
    keys = [k for k, v in ref_engine.items() if v.is_floating_point()]
    moved = testing.relative_error([ref_engine[k] for k in keys], [start[k] for k in keys])
    assert moved > 1e-5, "training did not move the parameters; the comparison would be vacuous"
    for r, res in enumerate(results):
        got = res[opt_name]
        assert res[opt_name + "_diff"] == 0.0, "ranks' parameters differ"
        for ref in (ref_engine, ref_plain):
            err = testing.relative_error([got[k] for k in keys], [ref[k] for k in keys])
            assert err < 1e-10, f"rank {r}, {opt_name}: relative parameter error {err:.3g}"
        for k, v in ref_engine.items():  # buffers (ActNorm flags, 1x1-conv permutations) intact
            if not v.is_floating_point():
                assert torch.equal(got[k], v), k


def test_ddp_helpers_checkpoint_and_data_init_pitfall(ddp_results):
    for res in ddp_results:
        assert res["ckpt_ok"]
        assert res["warned"]
        assert res["diverged"] > 0.0  # per-rank ActNorm init made the ranks differ ...
        assert res["after_broadcast"] == 0.0  # ... broadcast_module puts them back in step


def test_single_process_helpers_are_no_ops(tmp_path):
    assert not D.is_distributed()
    info = D.init_distributed()  # no torchrun environment: nothing to initialise
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model) is model
    assert D.max_parameter_difference(model) == 0.0
    D.broadcast_module(model)
    assert D.save_on_main(tmp_path / "c.pt", {"a": 1}) == tmp_path / "c.pt"
    loader = D.make_loader(TensorDataset(torch.arange(10.0)), 3, shuffle=False, drop_last=True)
    assert [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    with pytest.raises(ValueError, match="batch_size"):
        D.make_loader(TensorDataset(torch.arange(4.0)), 0)
    with pytest.raises(ValueError, match="global batch"):
        D.make_loader(TensorDataset(torch.arange(4.0)), 8)
    with pytest.raises(TypeError, match="sampler"):
        D.make_loader(TensorDataset(torch.arange(4.0)), 2, sampler=None)
    with pytest.raises(ValueError, match="rank"):
        D.init_distributed("gloo", f"file://{tmp_path}/x", rank=2, world_size=2)
    with pytest.raises(ValueError, match="backend"):
        D.init_distributed("carrier-pigeon", f"file://{tmp_path}/x", rank=0, world_size=2)
