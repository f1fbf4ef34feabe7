"""`invprox train` options of the flow prox's optimisation: the split priors and the couplings at their own
rates (`--lr-split`, `--lr-coupling`; 0 keeps them as pre-trained), and the pull towards the prior
(`--anchor`); and Adam's epsilon (`--adam-eps`)."""

import pytest
import torch
from conftest import train_kw as _kw

from invprox.train import load_checkpoint
from invprox.train.solver_setup import load_solver
from invprox.train.solver_train import train_solver


@pytest.fixture(scope="module")
def setup(tiny_data):
    return tiny_data


def _two_level_flow(path):
    """A two-level Glow on 1x8x8 images (one split prior), ActNorm initialised, saved to ``path``."""
    from invprox.flows.glow import Glow

    torch.manual_seed(0)
    glow = Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=4)
    with torch.no_grad():
        glow.train()(glow.preprocess(torch.rand(8, 1, 8, 8)))
    glow.save(path)


@pytest.mark.parametrize("lr_split", [0.0, 1e-2])
def test_split_priors_get_their_own_rate(setup, tmp_path, lr_split):
    """--lr-split: the flows' split priors train at their own rate; at 0 they stay as pre-trained while
    the rest of every flow trains."""
    from invprox.flows.glow import Glow

    _two_level_flow(tmp_path / "flow2.pt")
    out = tmp_path / "split"
    train_solver(out=str(out), **_kw(setup, K=2, max_steps=2, flow=str(tmp_path / "flow2.pt"),
                                     lr_split=lr_split, standard_autograd=True))
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, lr_split]
    solver, _ = load_solver(out / "solver.pt")
    pre = Glow.load(tmp_path / "flow2.pt")
    pre_split = [p for m in pre.modules() if type(m).__name__ == "SplitPrior" for p in m.parameters()]
    split = solver.split_prior_parameters()
    assert pre_split and len(split) == 2 * len(pre_split)  # one set per fold (untied)
    same = [torch.equal(a, b) for a, b in zip(split, pre_split * 2)]
    assert all(same) if lr_split == 0 else not any(same)
    split_ids = {id(p) for p in split}
    rest = [p for p in solver.flows[0].parameters() if id(p) not in split_ids]
    pre_rest = [p for p in pre.parameters() if all(p is not q for q in pre_split)]
    assert any(not torch.equal(a, b) for a, b in zip(rest, pre_rest))  # the rest of the flow trained


@pytest.mark.parametrize("lr_coupling", [0.0, 3e-3])
def test_couplings_get_their_own_rate(setup, tmp_path, lr_coupling):
    """--lr-coupling: the couplings train at their own rate, --lr-net sets the rest of each flow; the
    groups partition the solver's parameters; at 0 the couplings stay as pre-trained."""
    from invprox.flows.glow import Glow

    _two_level_flow(tmp_path / "flow2.pt")
    out = tmp_path / "coup"
    train_solver(out=str(out), **_kw(setup, K=2, max_steps=2, lr_coupling=lr_coupling, lr_split=0.0,
                                     flow=str(tmp_path / "flow2.pt"), standard_autograd=True))
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, lr_coupling, 0.0]
    solver, _ = load_solver(out / "solver.pt")
    ids = [id(p) for g in solver.param_groups(1.0, 2.0, 0.0, 3.0) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in solver.parameters())  # each parameter in one group
    split = {id(p) for p in solver.split_prior_parameters()}
    assert split and not split & {id(p) for p in solver.coupling_parameters()}  # a SplitPrior is no step's
    pre = Glow.load(tmp_path / "flow2.pt")
    names = [n for n, _ in pre.named_parameters()]
    fold = dict(solver.flows[0].named_parameters())
    changed = {n: not torch.equal(fold[n], p) for n, p in pre.named_parameters()}
    coup = [n for n in names if ".coupling." in n]
    assert coup and len(coup) < len(names)
    assert (not any(changed[n] for n in coup)) if lr_coupling == 0 else all(changed[n] for n in coup
                                                                              if n.endswith("net.4.weight"))
    assert any(changed[n] for n in names if ".coupling." not in n)  # ActNorm, 1x1 convs at --lr-net
    with pytest.raises(ValueError, match="lr_coupling must be a non-negative"):
        solver.param_groups(1e-3, 1e-2, lr_coupling=-1.0)


def test_anchor_pulls_the_flows_towards_their_start_and_resumes_exactly(setup, tmp_path):
    """--anchor W adds W (theta - theta_0) to the Glows' gradients: the flows end nearer the prior, and a
    resumed run keeps the anchor of its start (not the weights it resumed with)."""
    from invprox.flows.glow import Glow

    pre = [p.detach() for p in Glow.load(setup["flow"]).parameters()]

    def drift(run):
        state = load_checkpoint(tmp_path / run / "checkpoint.pt")["model"]
        now = [state["flows.0." + n] for n, _ in Glow.load(setup["flow"]).named_parameters()]
        return sum(float((p - q).pow(2).sum()) for p, q in zip(now, pre))

    kw = dict(K=1, lr_net=3e-2, calibrate=0, standard_autograd=True, val_every=100)
    train_solver(out=str(tmp_path / "free"), **_kw(setup, max_steps=6, **kw))
    train_solver(out=str(tmp_path / "pulled"), **_kw(setup, max_steps=6, anchor=1e3, **kw))
    assert 0 < drift("pulled") < 0.5 * drift("free")
    train_solver(out=str(tmp_path / "resumed"), **_kw(setup, max_steps=3, anchor=1e3, **kw))
    train_solver(out=str(tmp_path / "resumed"), resume=True, **_kw(setup, max_steps=6, anchor=1e3, **kw))
    a = load_checkpoint(tmp_path / "pulled" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(p, q) for p, q in zip(b["anchor"], pre))
    with pytest.raises(ValueError, match="anchor is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u"), **_kw(setup, prox="unet", flow=None, features=4, depth=1,
                                                    anchor=1.0))
    with pytest.raises(ValueError, match="anchor must be a non-negative"):
        train_solver(out=str(tmp_path / "n"), **_kw(setup, anchor=-1.0))


def test_adam_eps_sets_the_optimizer_and_damps_small_gradients(setup, tmp_path):
    """--adam-eps: Adam's epsilon in every group (kept in the checkpoint); an epsilon far above the
    gradients turns Adam's lr-sized steps into small ones; a non-positive one is refused."""
    from invprox.flows.glow import Glow

    pre = [p.detach() for p in Glow.load(setup["flow"]).parameters()]

    def run(name, **over):
        train_solver(out=str(tmp_path / name), **_kw(setup, max_steps=4, calibrate=0,
                                                     standard_autograd=True, val_every=100, **over))
        ck = load_checkpoint(tmp_path / name / "checkpoint.pt")
        now = [ck["model"]["flows.0." + n] for n, _ in Glow.load(setup["flow"]).named_parameters()]
        moved = sum(float((p - q).abs().sum()) for p, q in zip(now, pre))
        return moved, {g["eps"] for g in ck["optimizer"]["param_groups"]}

    moved, eps = run("default")
    assert eps == {1e-8}
    damped, eps = run("damped", adam_eps=1e2)
    assert eps == {1e2}
    assert 0 < damped < 0.01 * moved
    with pytest.raises(ValueError, match="adam_eps must be a positive"):
        train_solver(out=str(tmp_path / "bad"), **_kw(setup, adam_eps=0.0))


def test_freeze_levels_keeps_those_levels_as_pre_trained(setup, tmp_path):
    """--freeze-levels: the chosen multi-scale levels (flow steps and split prior) of every fold's flow stay
    as pre-trained while the other level trains; a level the flow lacks, and the option on a CNN prox, are
    refused."""
    from invprox.flows.glow import Glow
    from invprox.flows.step import parameters_by_level

    _two_level_flow(tmp_path / "flow2.pt")
    pre = Glow.load(tmp_path / "flow2.pt")
    by_level = parameters_by_level(pre.flow_blocks())
    assert len(by_level) == 2 and sum(map(len, by_level)) == len(list(pre.parameters()))
    names = {id(p): n for n, p in pre.named_parameters()}
    out = tmp_path / "frozen"
    train_solver(out=str(out), **_kw(setup, K=2, max_steps=2, freeze_levels=[1], lr_coupling=3e-3,
                                     flow=str(tmp_path / "flow2.pt"), standard_autograd=True))
    groups = load_checkpoint(out / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, 3e-3, 0.0]
    solver, cfg = load_solver(out / "solver.pt")
    assert cfg["freeze_levels"] == [1]
    for fold in solver.flows:
        now = dict(fold.named_parameters())
        for level, params in enumerate(by_level):
            same = [torch.equal(now[names[id(p)]], p) for p in params]
            assert all(same) if level == 1 else not all(same)
    ids = [id(p) for g in solver.param_groups(1.0, 2.0, freeze_levels=[1]) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in solver.parameters())  # each parameter in one group
    with pytest.raises(ValueError, match="level 2 is not one of the flows' levels 0 ... 1"):
        solver.param_groups(1.0, 2.0, freeze_levels=[2])
    with pytest.raises(ValueError, match="freeze_levels is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u"), **_kw(setup, prox="unet", flow=None, features=4, depth=1,
                                                    freeze_levels=[0]))
