"""The flow prox's levers: conditional Glows (`Glow.with_condition`, GlowStep's conditioning image) and the
flow prox that reads A^T y in every coupling (`FlowProxSolver(cond_y=True)`, `train --cond-y`); one
shrinkage per channel of the latent (`Glow.latent_channels`, `lam_per="channel"`); a Glow widened without
changing its function (`Glow.widened`, `train --widen`); a Glow with a level's flow steps dropped
(`Glow.with_steps`, `train --level-steps`)."""

import pytest
import torch
from conftest import engine_matches_standard, glow2, noisy_pair
from conftest import flow_train_kw as _kw

from invprox import InvertibleChain, testing
from invprox.core.block import Inverse
from invprox.flows import AffineCoupling, Glow
from invprox.flows.step import GlowStep
from invprox.physics import make_physics
from invprox.solvers import FlowProxSolver
from invprox.train.solver_setup import load_solver
from invprox.train.solver_train import train_solver

DT = torch.float64


def _cond_glow(seed=0):
    """glow2 made conditional, its injections random (as after training)."""
    g = glow2(seed).with_condition(1)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "inject" in name:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed + 5))
    return g


def _xc(seed=1, b=3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, 8, 8, generator=gen, dtype=DT) - 0.5,
            torch.randn(b, 1, 8, 8, generator=gen, dtype=DT))


def test_with_condition_starts_as_the_unconditional_glow():
    g = glow2()
    gc = g.with_condition(1)
    x, c = _xc()
    with torch.no_grad():
        assert torch.equal(gc(x, c), g(x))
        z = g(x)
        assert torch.equal(gc.inverse(z, c), g.inverse(z))
    assert gc.config["cond_channels"] == 1 and "cond_channels" not in g.config
    assert gc.with_condition(1).config == gc.config  # already conditional: a copy
    with pytest.raises(ValueError, match="conditional on 1 channels"):
        gc.with_condition(2)
    with pytest.raises(ValueError, match="positive int"):
        g.with_condition(0)


def test_conditional_glow_is_invertible_and_reads_its_condition(tmp_path):
    g = _cond_glow()
    x, c = _xc()
    with torch.no_grad():
        z = g(x, c)
        assert testing.relative_error([g.inverse(z, c)], [x]) < 1e-12
        assert (g(x, c + 1.0) - z).abs().max() > 1e-3  # the condition changes f
        testing.check_logdet(g, x, c)
    g.save(tmp_path / "g.pt")
    h = Glow.load(tmp_path / "g.pt")
    with torch.no_grad():
        assert torch.allclose(h.to(DT)(x, c), z)
    with pytest.raises(ValueError, match="conditional: pass a conditioning image of shape"):
        g(x)
    with pytest.raises(ValueError, match=r"shape \(3, 1, 8, 8\)"):
        g(x, c[:, :, :4])
    assert g.sample(3, cond=c).shape == (3, 1, 8, 8) and g.mode(3, cond=c).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("inverse", [False, True])
def test_conditional_steps_give_exact_gradients_to_input_condition_and_parameters(inverse):
    g = _cond_glow()
    blocks = g.flow_blocks()
    if inverse:  # g = f^-1, as in a solver's fold (rebuild_inverse)
        blocks = [Inverse(b) for b in reversed(blocks)]
    x, c = _xc()
    err, _ = testing.check_chain_gradients(blocks, x, c, tol=1e-9)
    err_plain, _ = testing.check_chain_gradients(blocks, x, c, logdet=False, tol=1e-9)
    assert err < 1e-9 and err_plain < 1e-9


def test_conditional_step_gradient_reaches_the_condition():
    step = GlowStep(4, hidden=6, cond_channels=1, cond_factor=2).to(DT)
    testing.randomize_parameters(step, 0.3, seed=2)
    x = torch.randn(2, 4, 4, 4, dtype=DT)
    c = torch.randn(2, 1, 8, 8, dtype=DT, requires_grad=True)
    chain = InvertibleChain([step])
    (chain(x, c) ** 2).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="conditioning image of shape"):
        step(x)


def test_inject_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="inject_channels"):
        AffineCoupling(4, hidden=4, cond_channels=1, inject_channels=2)
    with pytest.raises(ValueError, match="inject_channels"):
        AffineCoupling(4, net=torch.nn.Conv2d(2, 4, 1), inject_channels=2)
    with pytest.raises(ValueError, match="needs its conditioning tensor"):
        AffineCoupling(4, hidden=4, inject_channels=2)(torch.randn(1, 4, 2, 2))


def test_cond_y_solver_starts_as_the_plain_one_and_trains_exactly():
    op = make_physics("denoising", (1, 8, 8))
    x, y = noisy_pair()
    plain = FlowProxSolver(glow2(), op, K=2).to(DT).eval()
    cond = FlowProxSolver(glow2(), op, K=2, cond_y=True).to(DT).eval()
    missing = cond.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.endswith("inject.weight") for k in missing)
    with torch.no_grad():
        assert torch.equal(cond(y), plain(y))
    rep_p, rep_c = plain.calibrate(y, x), cond.calibrate(y, x)  # the calibration sees the same folds
    assert rep_p["psnr"] == rep_c["psnr"]
    testing.randomize_parameters(cond.flows, 0.05, seed=4)
    engine_matches_standard(cond, x, y, cond_y=True)
    inj = [p.grad for n, p in cond.named_parameters() if "inject" in n]
    assert all(gr is not None for gr in inj) and sum(float(gr.abs().sum()) for gr in inj) > 0
    with torch.no_grad():
        assert torch.allclose(cond.iterates(y)[-1], cond(y), atol=1e-12)
        # the conditioning image is A^T y~ of the call's operator
        assert torch.equal(cond.fold_conds(cond.flow_measurement(y))[0][0], y - 0.5)
    mode = FlowProxSolver(glow2(), op, K=1, cond_y=True, start="mode").to(DT).eval()
    assert mode.start(y).shape == y.shape
    with pytest.raises(TypeError, match="with_condition"):
        FlowProxSolver(InvertibleChain(glow2().flow_blocks()), op, K=1, lam_per="scalar", cond_y=True)


def test_cond_net_starts_as_cond_y_trains_exactly_and_with_the_couplings():
    op = make_physics("denoising", (1, 8, 8))
    x, y = noisy_pair()
    cond = FlowProxSolver(glow2(), op, K=2, cond_y=True).to(DT).eval()
    testing.randomize_parameters(cond.flows, 0.05, seed=4)
    net = FlowProxSolver(glow2(), op, K=2, cond_net=3, cond_hidden=4).to(DT).eval()
    assert net.cond_y and net.flows[0].cond_channels == 1 + 3
    state = {k: v for k, v in cond.state_dict().items() if "inject" not in k}
    missing = net.load_state_dict(state, strict=False).missing_keys
    assert sorted({k.split(".")[0] for k in missing if "inject" not in k}) == ["cond_net"]
    with torch.no_grad():
        # the injection from the new channels starts at zero: the same folds as with A^T y~ alone (space
        # to depth keeps A^T y~'s squeezed channels first)
        inj = [p for n, p in net.named_parameters() if "inject" in n]
        for p, q in zip(inj, [p for n, p in cond.named_parameters() if "inject" in n]):
            assert float(p.abs().sum()) == 0
            p[:, : q.shape[1]] = q
        assert torch.allclose(net(y), cond(y), atol=1e-12)
        c = net.fold_conds(net.flow_measurement(y))[0][0]
        assert c.shape == (4, 4, 8, 8) and torch.equal(c[:, :1], y - 0.5) and float(c[:, 1:].abs().sum()) > 0
    testing.randomize_parameters(net.flows, 0.05, seed=5)
    engine_matches_standard(net, x, y, cond_net=3, cond_hidden=4)
    own = list(net.cond_net.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in own)
    ids = {id(p) for p in net.coupling_parameters()}
    assert all(id(p) in ids for p in own)
    groups = net.param_groups(lr_net=1e-4, lr_coupling=1e-3)
    assert all(id(p) in {id(q) for q in groups[-1]["params"]} for p in own) and groups[-1]["lr"] == 1e-3
    for bad, match in (({"cond_net": -1}, "cond_net must be"), ({"cond_net": 2, "cond_hidden": 0},
                       "cond_hidden must be"), ({"cond_net": 2, "lam_y": True}, "cannot be combined")):
        with pytest.raises(ValueError, match=match):
            FlowProxSolver(glow2(), op, K=1, **bad)


def test_train_cond_y_saves_resumes_grows_and_checks(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "c1"), **_kw(tiny_data, K=1, cond_y=True))
    assert m["config"]["cond_y"] is True
    solver, cfg = load_solver(tmp_path / "c1" / "solver.pt")
    assert solver.cond_y and cfg["cond_y"]
    assert any("inject" in n for n, _ in solver.named_parameters())
    m2 = train_solver(out=str(tmp_path / "c1"), resume=True, **_kw(tiny_data, K=1, cond_y=True, max_steps=3))
    assert m2["steps"] == 3
    src = str(tmp_path / "c1" / "solver.pt")
    m3 = train_solver(out=str(tmp_path / "c2"), **_kw(tiny_data, K=2, cond_y=True, init_from=src))
    assert m3["init_from"]["K"] == 1 and load_solver(tmp_path / "c2" / "solver.pt")[0].cond_y
    with pytest.raises(ValueError, match="its cond_y is True"):
        train_solver(out=str(tmp_path / "c3"), **_kw(tiny_data, K=2, init_from=src))
    m4 = train_solver(out=str(tmp_path / "n1"), **_kw(tiny_data, K=1, cond_net=2))
    solver, cfg = load_solver(tmp_path / "n1" / "solver.pt")
    assert cfg["cond_net"] == 2 and solver.cond_net is not None and m4["steps"] == 2
    with pytest.raises(ValueError, match="its cond_net is 2"):
        train_solver(out=str(tmp_path / "n2"), **_kw(tiny_data, K=2, cond_y=True,
                                                     init_from=str(tmp_path / "n1" / "solver.pt")))
    train_solver(out=str(tmp_path / "n4"), **_kw(tiny_data, K=2, cond_net=2, max_steps=0,
                                                 init_from=str(tmp_path / "n1" / "solver.pt")))
    grown = load_solver(tmp_path / "n4" / "solver.pt")[0]
    assert all(torch.equal(p, q) for p, q in zip(grown.cond_net.parameters(), solver.cond_net.parameters()))
    with pytest.raises(ValueError, match="cond_net must be a positive int"):
        train_solver(out=str(tmp_path / "n3"), **_kw(tiny_data, K=1, cond_net=0))
    with pytest.raises(ValueError, match="cond_y is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u"), **_kw(tiny_data, prox="unet", flow=None, features=4, depth=1,
                                                    cond_y=True))


def test_latent_channels_refine_the_levels():
    g = glow2()
    lv, ch = g.latent_levels(), g.latent_channels()
    assert lv.shape == ch.shape == (1, 8, 8)
    # level 0 factors out 2 of the 4 squeezed channels at 4x4, level 1 keeps all 8 at 2x2
    assert lv.flatten().bincount().tolist() == [32, 32]
    assert ch.flatten().bincount().tolist() == [16, 16] + [4] * 8
    for c in range(int(ch.max()) + 1):  # each channel lies in one level, and levels come in order
        assert lv[ch == c].unique().tolist() == [0 if c < 2 else 1]
    big = Glow(in_channels=3, image_size=32, levels=3, steps=1, hidden=4)
    assert int(big.latent_channels().max()) + 1 == 6 + 12 + 48


def test_lam_per_channel_calibrates_per_level_and_learns_per_channel(tiny_data, tmp_path):
    op = make_physics("denoising", (1, 8, 8))
    x, y = noisy_pair()
    lev = FlowProxSolver(glow2(), op, K=2).to(DT)
    ch = FlowProxSolver(glow2(), op, K=2, lam_per="channel").to(DT)
    assert ch.lam_group_level == [0, 0] + [1] * 8 and ch.shrink[0].raw_lam.numel() == 10
    rep_l, rep_c = lev.calibrate(y, x), ch.calibrate(y, x)
    assert rep_c["psnr"] == rep_l["psnr"]  # one value per level: the same choice
    lam = rep_c["folds"][0]["lam"]
    assert lam[:2] == [rep_l["folds"][0]["lam"][0]] * 2 and lam[2:] == [rep_l["folds"][0]["lam"][1]] * 8
    testing.randomize_parameters(ch.flows, 0.05, seed=4)
    ((ch(y) - x) ** 2).mean().backward()
    g = ch.shrink[0].raw_lam.grad
    assert g.shape == (10,) and len(set(g.tolist())) > 2  # each channel its own gradient
    with pytest.raises(TypeError, match="latent_channels"):
        FlowProxSolver(InvertibleChain(glow2().flow_blocks()), op, K=1, lam_per="channel")
    m = train_solver(out=str(tmp_path / "ch"), **_kw(tiny_data, K=1, lam_per="channel"))
    assert m["config"]["lam_per"] == "channel"
    assert load_solver(tmp_path / "ch" / "solver.pt")[0].lam_per == "channel"


def test_lam_y_reads_lambda_from_the_measurement(tiny_data, tmp_path):
    op = make_physics("denoising", (1, 8, 8))
    x, y = noisy_pair()
    plain = FlowProxSolver(glow2(), op, K=2).to(DT).eval()
    ly = FlowProxSolver(glow2(), op, K=2, lam_y=True).to(DT).eval()
    ly.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        ly.shrink[0].set_lam([0.3, 0.7])
        plain.shrink[0].set_lam([0.3, 0.7])
        assert torch.allclose(ly(y), plain(y), atol=1e-12)  # the map starts at the groups' values
    assert ly.calibrate(y, x)["psnr"] == plain.calibrate(y, x)["psnr"]
    n_step = sum(p.numel() for p in ly.step_parameters())
    assert n_step == 2 * (1 + 2)  # mu_k and the 2 level lambdas per fold; the map's network is not
    testing.randomize_parameters(ly.flows, 0.05, seed=4)
    testing.randomize_parameters(ly.shrink, 0.05, seed=6)
    with torch.no_grad():
        assert (ly(y) - ly(y + 0.1)).abs().max() > 1e-4
        s = ly.shrink[0]
        c = torch.randn(4, 1, 8, 8, dtype=DT)
        z = torch.randn(4, 1, 8, 8, dtype=DT)
        assert torch.allclose(s.inverse(s(z, c), c), z, atol=1e-12)
        testing.check_logdet(s, z, c)
    engine_matches_standard(ly, x, y, lam_y=True)
    assert ly.shrink[0].lam_net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="lam_y needs Gaussian"):
        FlowProxSolver(glow2(), op, K=1, lam_y=True, lam_per="scalar")
    m = train_solver(out=str(tmp_path / "ly"), **_kw(tiny_data, K=1, lam_y=True, cond_y=True,
                                                     lam_per="channel"))
    assert m["config"]["lam_y"] is True
    loaded = load_solver(tmp_path / "ly" / "solver.pt")[0]
    assert loaded.lam_y and loaded.cond_y


def test_a_conditional_glow_switches_cond_y_on_and_grown_lam_y_folds_start_as_identities():
    op = make_physics("denoising", (1, 8, 8))
    _, y = noisy_pair()
    s = FlowProxSolver(_cond_glow(), op, K=1).to(DT).eval()
    assert s.cond_y  # a trained solver's conditional Glow in a new solver reads A^T y~ as in training
    with torch.no_grad():
        assert torch.allclose(s.iterates(y)[-1], s(y), atol=1e-12)
    from invprox.solvers.grow import grow_solver

    small = FlowProxSolver(glow2(), op, K=1, lam_y=True).to(DT).eval()
    testing.randomize_parameters(small.shrink, 1.0, seed=3)
    big = FlowProxSolver(glow2(), op, K=2, lam_y=True).to(DT).eval()
    grow_solver(big, small)
    assert big.shrink[1].lam_net[-1].weight.abs().sum() == 0  # the copied map is reset
    with torch.no_grad():
        assert float((big(y) - small(y)).abs().max()) < 0.01


@pytest.mark.parametrize("cond", [0, 1])
def test_widened_glow_computes_the_same_flow_and_trains_its_new_units(cond):
    g = glow2() if not cond else _cond_glow()
    x, c = _xc()
    cs = (c,) if cond else ()
    w = g.widened(7)
    assert w.config["hidden"] == 7 and g.config["hidden"] == 4
    assert sum(p.numel() for p in w.parameters()) > sum(p.numel() for p in g.parameters())
    with torch.no_grad():
        z, ld = g.forward_and_logdet(x, *cs)
        zw, ldw = w.forward_and_logdet(x, *cs)
        assert testing.relative_error([zw, ldw], [z, ld]) < 1e-13
        assert testing.relative_error([w.inverse(z, *cs)], [x]) < 1e-12
    (w(x, *cs) ** 2).sum().backward()
    last = w.flow_blocks()[1].coupling.net[-1]  # the output layer's weights from the new units learn at once
    assert float(last.weight.grad[:, 4:].abs().sum()) > 0
    assert g.widened(4).config == g.config  # the same width: a copy
    with pytest.raises(ValueError, match="hidden must be an int >= the Glow's 4"):
        g.widened(3)
    err, _ = testing.check_chain_gradients(w.flow_blocks(), x, *cs, tol=1e-9)
    assert err < 1e-9


def test_train_widen_builds_on_the_wider_glow_and_resumes(tiny_data, tmp_path):
    m = train_solver(out=str(tmp_path / "w"), **_kw(tiny_data, K=1, widen=6))
    assert m["config"]["widen"] == 6
    solver, _ = load_solver(tmp_path / "w" / "solver.pt")
    assert solver.flows[0].config["hidden"] == 6
    m2 = train_solver(out=str(tmp_path / "w"), resume=True, **_kw(tiny_data, K=1, widen=6, max_steps=3))
    assert m2["steps"] == 3
    with pytest.raises(ValueError, match="widen is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u"), **_kw(tiny_data, prox="unet", flow=None, features=4, depth=1,
                                                    widen=6))
    with pytest.raises(ValueError, match="keeps its source's Glow"):
        train_solver(out=str(tmp_path / "g"), **_kw(tiny_data, K=2, widen=6,
                                                    init_from=str(tmp_path / "w" / "solver.pt")))


def test_glow_with_steps_drops_a_levels_steps_and_a_fold_that_leaves_it_alone_is_unchanged():
    g = glow2()
    x, _ = _xc()
    t = g.with_steps([1, 0])
    assert t.config["steps"] == [1, 0] and len(t.flow_blocks()) == len(g.flow_blocks()) - 1
    assert g.with_steps([1, 1]).config["steps"] == [1, 1]
    levels = g.latent_levels()
    with torch.no_grad():
        z, zt = g(x), t(x)
        fine = (levels == 0).expand_as(z)
        assert torch.equal(z[fine], zt[fine])  # the finest level's latents do not see the coarsest's steps
        assert not torch.allclose(z, zt)  # another flow
        assert testing.relative_error([t.inverse(zt)], [x]) < 1e-12
    err, _ = testing.check_chain_gradients(t.flow_blocks(), x, tol=1e-9)
    assert err < 1e-9
    # a fold whose shrinkage leaves the dropped level alone: g and f cancel there, so the fold is the same
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    outs = []
    for flow in (g, t):
        s = FlowProxSolver(flow, make_physics("denoising", (1, 8, 8)), K=1).to(DT)
        with torch.no_grad():
            s.shrink[0].raw_lam.copy_(torch.tensor([0.5, -60.0], dtype=DT))  # lambda_1 = 1e-26
            outs.append(s(y))
    assert testing.relative_error([outs[1]], [outs[0]]) < 1e-12
    for bad, msg in (([2, 0], "more flow steps than the Glow has"), ([0, 0], "at least one step"),
                     ([1], "2 non-negative counts"), ([1, -1], "2 non-negative counts")):
        with pytest.raises(ValueError, match=msg):
            g.with_steps(bad)
    with pytest.raises(ValueError, match="steps must be a positive int or one count per level, got 0"):
        Glow(in_channels=1, image_size=8, levels=2, steps=0)


def test_train_level_steps_builds_on_the_truncated_glow_and_resumes(tiny_data, tmp_path):
    torch.manual_seed(0)
    two = Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=4)
    with torch.no_grad():
        two.train()(two.preprocess(torch.rand(8, 1, 8, 8)))
    two.save(tmp_path / "flow2.pt")
    tiny_data = {**tiny_data, "flow": str(tmp_path / "flow2.pt")}
    m = train_solver(out=str(tmp_path / "t"), **_kw(tiny_data, K=1, level_steps=[1, 0], freeze_levels=[1]))
    assert m["config"]["level_steps"] == [1, 0]
    solver, _ = load_solver(tmp_path / "t" / "solver.pt")
    assert solver.flows[0].config["steps"] == [1, 0]
    m2 = train_solver(out=str(tmp_path / "t"), resume=True,
                      **_kw(tiny_data, K=1, level_steps=[1, 0], freeze_levels=[1], max_steps=3))
    assert m2["steps"] == 3
    with pytest.raises(ValueError, match="level_steps is an option of the flow prox"):
        train_solver(out=str(tmp_path / "u"), **_kw(tiny_data, prox="unet", flow=None, features=4, depth=1,
                                                    level_steps=[1, 0]))
    with pytest.raises(ValueError, match="more flow steps than the Glow has"):
        train_solver(out=str(tmp_path / "v"), **_kw(tiny_data, K=1, level_steps=[3, 0]))
