"""The SCHN method: networks, gradient flow, adversarial steps, training and code updates."""
import pytest
import torch
from torch import nn

from schn.errors import SchnError
from schn.methods import SCHN, SCHNConfig, create_method, list_methods, method_config

N, D, K, BITS = 24, 20, 4, 6
SMALL = dict(attention_dim=16, latent_dim=32)


def make(variant="mmasia", seed=0, name="schn", **options):
    torch.manual_seed(seed)
    labels = torch.eye(K)[torch.arange(N) % K]
    cfg = method_config(name, {"variant": variant, **SMALL, **options})
    method = create_method(name, cfg, nn.Identity(), D, K, BITS, labels, "cpu")
    features = torch.randn(N, D)
    return method, features, labels


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_registry_and_config():
    assert "schn" in list_methods()
    assert SCHNConfig() == SCHNConfig(variant="mmasia", alpha=2.0, beta=0.1, gamma=10.0, lr=4e-5,
                                      weight_decay=1e-5, init_codes="random",
                                      latent_activation="sigmoid", sign_zero="plus_one",
                                      full_similarity=False, graph_norm="none", attention_dim=512,
                                      latent_dim=1024, dropout=0.5, backbone_lr_scale=1.0,
                                      label_loss_weight=1.0, latent_loss_weight=1.0, rec_loss_weight=1.0)
    assert method_config("schn", {"gamma": 200.0}).gamma == 200.0
    for bad in ({"variant": "icme"}, {"init_codes": "ones"}, {"sign_zero": "minus"},
                {"latent_activation": "relu"}, {"graph_norm": "col"}, {"lr": 0.0}):
        with pytest.raises(SchnError):
            method_config("schn", bad)
    with pytest.raises(SchnError):
        method_config("schn", {"no_such_option": 1})
    with pytest.raises(SchnError):
        create_method("nope", None, nn.Identity(), D, K, BITS, torch.zeros(N, K), "cpu")


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
@pytest.mark.parametrize("m", [1, 5])
def test_network_shapes_and_ranges(variant, activation, m):
    method, x, y = make(variant, latent_activation=activation)
    F_I, U_I = method.image_net(x[:m])
    F_L, U_L = method.label_net(y[:m])
    out = method.interaction(F_I, F_L, method.label_graph(y[:m]))
    assert F_I.shape == (m, D) and F_L.shape == (m, 512)
    for U in (U_I, U_L, out.latent, out.rec_image, out.rec_label):
        assert U.shape == (m, BITS)
    for U in (U_I, U_L, out.rec_image, out.rec_label):
        assert U.abs().max() < 1
    low = 0 if activation == "sigmoid" else -1
    assert out.latent.min() > low and out.latent.max() < 1
    assert (method.discriminator is not None) == (variant == "tomm")
    assert method.encode(x[:m]).shape == (m, BITS)


def test_label_graph_has_self_loops():
    y = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    assert torch.equal(SCHN.label_graph(y), torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]]))


def test_interaction_inputs_are_detached_and_reconstructions_reach_nets_only_via_their_codes():
    method, x, y = make()
    terms, _ = method.compute_losses(x[:8], y[:8], torch.arange(8))
    # the latent term sees F_I, F_L only through the detached interaction inputs
    method.zero_grad(set_to_none=True)
    terms["loss_latent"].backward(retain_graph=True)
    assert all(p.grad is None for p in method.image_net.parameters())
    assert all(p.grad is None for p in method.label_net.parameters())
    assert any(p.grad is not None for p in method.interaction.parameters())
    # reconstruction of U_I reaches the image net through U_I itself (its own hash output) only
    for name, net, other in (("loss_rec_image", method.image_net, method.label_net),
                             ("loss_rec_label", method.label_net, method.image_net)):
        method.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()), name
        assert all(p.grad is None for p in other.parameters()), name


def test_detach_rec_targets_option_keeps_reconstructions_in_the_interaction_module():
    method, x, y = make(detach_rec_targets=True)
    terms, _ = method.compute_losses(x[:8], y[:8], torch.arange(8))
    for name in ("loss_rec_image", "loss_rec_label"):
        method.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        assert all(p.grad is None for p in method.image_net.parameters()), name
        assert all(p.grad is None for p in method.label_net.parameters()), name


def test_adversarial_steps_leave_image_and_label_nets_alone():
    method, x, y = make("tomm", lr=1e-3)
    img, lab, inter, disc = (params(m) for m in (method.image_net, method.label_net,
                                                  method.interaction, method.discriminator))
    losses = method._adversarial_steps(x[:8], y[:8])
    assert set(losses) == {"loss_disc", "loss_gen"}
    assert not changed(img, method.image_net) and not changed(lab, method.label_net)
    assert changed(inter, method.interaction) and changed(disc, method.discriminator)


def test_generator_step_changes_only_the_interaction_module():
    method, x, y = make("tomm", lr=1e-3)
    method.train()
    with torch.no_grad():
        F_I, _ = method.image_net(x[:8])
        F_L, _ = method.label_net(y[:8])
    out = method.interaction(F_I, F_L, method.label_graph(y[:8]))
    others = {m: params(m) for m in (method.image_net, method.label_net, method.discriminator)}
    inter = params(method.interaction)
    method._generator_step(out.rec_image, out.rec_label)
    assert changed(inter, method.interaction)
    assert not any(changed(before, m) for m, before in others.items())


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_training_decreases_loss_and_updates_codes(variant):
    method, x, y = make(variant, lr=1e-3)
    batch = torch.arange(8)

    def fixed_batch_loss():
        method.eval()
        with torch.no_grad():
            return float(method.compute_losses(x[batch], y[batch], batch)[0]["loss"])

    before = fixed_batch_loss()
    expected = {"loss", "loss_image", "loss_label", "loss_latent", "loss_rec_image", "loss_rec_label"}
    if variant == "tomm":
        expected |= {"loss_disc", "loss_gen"}
    for epoch in range(3):
        for start in range(0, N, 8):
            pos = torch.arange(start, start + 8)
            terms = method.training_step(x[pos], y[pos], pos, record=epoch == 2)
            assert set(terms) == expected and all(isinstance(v, float) for v in terms.values())
    assert fixed_batch_loss() < before
    B_before = method.database_codes()
    stats = method.end_iteration()
    assert stats["codes_updated"] == N and 0 <= stats["bits_changed"] <= 1
    B = method.database_codes()
    assert set(B.unique().tolist()) <= {-1.0, 1.0}
    assert stats["bits_changed"] == pytest.approx(float((B != B_before).float().mean()))
    assert method.end_iteration() == {}  # records were cleared
    assert torch.isfinite(torch.tensor(fixed_batch_loss()))


def test_batch_of_one_trains():
    method, x, y = make("tomm")
    terms = method.training_step(x[:1], y[:1], torch.tensor([3]), record=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert method.end_iteration()["codes_updated"] == 1


def test_end_iteration_updates_only_recorded_positions():
    method, x, y = make()
    before = method.database_codes()
    pos = torch.tensor([0, 5, 9, 13])
    method.training_step(x[pos], y[pos], pos, record=True)
    method.end_iteration()
    after = method.database_codes()
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(after[untouched], before[untouched])


def test_full_similarity_gives_the_same_update_when_omega_is_everything():
    results = []
    for full in (False, True):
        method, x, y = make(seed=3, full_similarity=full, dropout=0.0)
        method.training_step(x, y, torch.arange(N), record=True)
        method.end_iteration()
        results.append(method.database_codes())
    assert torch.equal(*results)


def test_init_codes_and_seed():
    assert torch.equal(make(init_codes="zeros")[0].database_codes(), torch.zeros(N, BITS))
    a, b, c = (make(seed=s)[0].database_codes() for s in (0, 0, 1))
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sign_zero_zero_leaves_zero_codes():
    # Zero outputs everywhere make every update argument 0: authors' sign gives 0 bits.
    method, x, y = make(init_codes="zeros", sign_zero="zero")
    method._recorded[:] = True
    assert method.end_iteration()["bits_changed"] == 0
    assert torch.equal(method.database_codes(), torch.zeros(N, BITS))
    method, x, y = make(init_codes="zeros")
    method._recorded[:] = True
    method.end_iteration()
    assert torch.equal(method.database_codes(), torch.ones(N, BITS))


def test_set_codes_and_optimizer_state_round_trip():
    method, x, y = make("tomm")
    method.set_database_codes(torch.tensor([1, 2]), torch.ones(2, BITS))
    assert torch.equal(method.database_codes()[1:3], torch.ones(2, BITS))
    method.training_step(x[:4], y[:4], torch.arange(4), record=False)
    states = method.optimizer_states()
    assert set(states) == {"image", "label", "interaction", "discriminator"}
    other, _, _ = make("tomm", seed=1)
    other.load_optimizer_states(states)
    with pytest.raises(SchnError):
        make("mmasia")[0].load_optimizer_states({"image": states["image"]})


def test_trainable_backbone_gets_scaled_lr_and_frozen_one_stays_out():
    torch.manual_seed(0)
    labels = torch.eye(K)[torch.arange(N) % K]
    cfg = SCHNConfig(backbone_lr_scale=0.1, **SMALL)
    method = create_method("schn", cfg, nn.Sequential(nn.Linear(7, D), nn.Dropout(0.5)), D, K,
                           BITS, labels, "cpu")
    groups = method.optimizers["image"].param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(4e-5), pytest.approx(4e-6)]
    frozen = nn.Sequential(nn.Linear(7, D), nn.Dropout(0.5)).requires_grad_(False)
    method = create_method("schn", cfg, frozen, D, K, BITS, labels, "cpu")
    assert len(method.optimizers["image"].param_groups) == 1
    method.train()
    assert not frozen.training  # a frozen feature extractor never applies its dropout


def test_ablation_weights_scale_terms_and_skip_the_interaction_module():
    method, x, y = make()
    pos = torch.arange(8)
    full, _ = method.compute_losses(x[:8], y[:8], pos)
    torch.manual_seed(1)
    method.config.label_loss_weight, method.config.rec_loss_weight = 0.5, 2.0
    method.eval()  # no dropout: the two passes are comparable
    base, _ = method.compute_losses(x[:8], y[:8], pos)
    method.config.label_loss_weight, method.config.rec_loss_weight = 1.0, 1.0
    ref, _ = method.compute_losses(x[:8], y[:8], pos)
    assert torch.allclose(base["loss_label"], 0.5 * ref["loss_label"])
    assert torch.allclose(base["loss_rec_image"], 2.0 * ref["loss_rec_image"])
    assert set(full) == set(ref)

    lean, x, y = make(latent_loss_weight=0.0, rec_loss_weight=0.0, beta=0.0)
    assert not lean.uses_interaction()
    lean.interaction.forward = None  # would fail if called
    terms = lean.training_step(x[:8], y[:8], pos, record=True)
    assert set(terms) == {"loss_image", "loss_label", "loss"}
    assert lean.end_iteration()["codes_updated"] == 8
    assert make("tomm", latent_loss_weight=0.0, rec_loss_weight=0.0, beta=0.0)[0].uses_interaction()


def _train_tomm(adversarial_pass):
    method, x, y = make("tomm", adversarial_pass=adversarial_pass)
    method.begin_iteration(0, torch.arange(N).numpy())
    for epoch in range(2):
        for batch in (torch.arange(0, 12), torch.arange(12, N)):
            method.training_step(x[batch], y[batch], batch, record=epoch == 1)
    method.end_iteration()
    return method


def test_the_authors_full_second_pass_gives_the_same_training_as_the_fresh_one():
    fresh, full, reuse = (_train_tomm(mode) for mode in ("fresh", "full", "reuse"))
    state = fresh.state_dict()
    assert all(torch.equal(state[k], full.state_dict()[k]) for k in state)  # the same values, more work
    assert not all(torch.equal(state[k], reuse.state_dict()[k]) for k in state)  # pre-step outputs: not equal


# ----- the departures from method.md (issue 14), each off by default -----
def test_departure_options_are_validated():
    for bad in ({"update_scope": "all"}, {"pairing": "pool"}, {"detach_cycle_inputs": "maybe"}):
        with pytest.raises(SchnError):
            method_config("schn", bad)
    cfg = SCHNConfig()
    assert (cfg.update_scope, cfg.pairing, cfg.detach_cycle_inputs) == ("sampled", "batch", True)


@pytest.mark.parametrize("name,options", [("schn", {"update_scope": "database"}), ("schn-plus", {})])
def test_update_scope_database_updates_every_code_with_the_database_update(name, options):
    from schn.methods.adsh import balance_ratio, similarity_t_times
    from schn.methods.schn_loss import database_update
    method, x, y = make(seed=2, name=name, dropout=0.0, **options)
    pos = torch.tensor([0, 5, 9, 13, 14])
    method.begin_iteration(0, pos.numpy())
    method.training_step(x[pos], y[pos], pos, record=True)
    B0, U, U_Z = method.database_codes(), method._rec["image"][pos], method._rec["latent"][pos]
    with torch.no_grad():
        U_L = method.label_net(y)[1]
        S_t_U = similarity_t_times(y[pos], y, U, balance_ratio(y[pos], y))
        expected = database_update(B0, U, pos, S_t_U, U_L, U_Z, 10.0, 2.0, 0.1)
    stats = method.end_iteration()
    assert stats["codes_updated"] == N
    assert torch.equal(method.database_codes(), expected)
    outside = torch.ones(N, dtype=torch.bool)
    outside[pos] = False
    assert not torch.equal(expected[outside], B0[outside])  # codes never sampled move too


@pytest.mark.parametrize("pairing", ["sampled", "database"])
def test_pairing_compares_a_batch_with_omegas_or_every_code_on_balanced_rows(pairing):
    from schn.methods.adsh import adsh_similarity, balance_ratio
    from schn.methods.schn_loss import asymmetric_loss
    method, x, y = make(seed=1, pairing=pairing, dropout=0.0)
    omega = torch.tensor([1, 2, 3, 6, 7, 8, 11])
    method.begin_iteration(0, omega.numpy())
    batch = omega[:4]
    terms, out = method.compute_losses(x[batch], y[batch], batch)
    other = omega if pairing == "sampled" else torch.arange(N)
    S = adsh_similarity(y[batch], y[other], balance_ratio(y[omega], y[other]))
    B = method.database_codes()
    expected = asymmetric_loss(out["image"], B[batch], S, 10.0, B[other])
    assert torch.allclose(terms["loss_image"], expected)
    # before any outer iteration (no Omega yet) a batch is paired with every code
    fresh, x, y = make(seed=1, pairing=pairing, dropout=0.0)
    assert torch.isfinite(fresh.compute_losses(x[:4], y[:4], torch.arange(4))[0]["loss"])


def test_undetached_cycle_inputs_let_the_cycle_train_the_image_and_label_nets():
    torch.manual_seed(0)
    labels = torch.eye(K)[torch.arange(N) % K]
    grads = {}
    for detach in (True, False):
        cfg = SCHNConfig(detach_cycle_inputs=detach, **SMALL)
        method = create_method("schn", cfg, nn.Linear(D, D), D, K, BITS, labels, "cpu")
        terms, _ = method.compute_losses(torch.randn(8, D), labels[:8], torch.arange(8))
        method.zero_grad(set_to_none=True)
        terms["loss_latent"].backward()
        grads[detach] = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
                         for net in (method.image_net.backbone, method.label_net)]
    assert grads == {True: [False, False], False: [True, True]}


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
@pytest.mark.parametrize("graph_norm", ["none", "row", "symmetric"])
@pytest.mark.parametrize("multi", [False, True])
def test_the_interaction_module_by_label_group_equals_the_per_item_pass(variant, graph_norm, multi):
    """The fast pass (label side once per distinct label row) against the plain one: outputs and
    every parameter's gradient, with the same dropout mask (one draw per item in both)."""
    from schn.methods.schn_nets import LabelGroups
    torch.manual_seed(5)
    b = 12
    if multi:
        y = (torch.rand(b, K) < 0.4).float()
        y[:2] = 0  # two items with no label: linked to themselves only
        y[2] = y[3]
    else:
        y = torch.eye(K)[torch.randint(0, K, (b,))]
    method, _, _ = make(variant, graph_norm=graph_norm, **SMALL)
    F_I = torch.randn(b, D, dtype=torch.float64)
    net = method.interaction.double()
    F_L = method.label_net.double()(y.double())[0].detach()
    groups = LabelGroups.of(y.double())
    results = []
    for grouped in (False, True):
        torch.manual_seed(9)
        out = (net.by_group(F_I, method.label_net(groups.rows)[0].detach(), groups) if grouped
               else net(F_I, F_L, method.label_graph(y).double()))
        net.zero_grad(set_to_none=True)
        (out.latent.sum() + (out.rec_image ** 2).sum() + out.rec_label.sin().sum()).backward()
        results.append(([out.latent, out.rec_image, out.rec_label],
                        [p.grad.clone() for p in net.parameters()]))
    (plain, plain_grads), (fast, fast_grads) = results
    for a, b_ in zip(plain + plain_grads, fast + fast_grads):
        assert torch.allclose(a, b_, rtol=1e-9, atol=1e-11)


def test_label_target_pulls_the_image_codes_towards_the_label_codes_only():
    method, x, y = make(label_target_weight=3.0)
    terms, out = method.compute_losses(x[:8], y[:8], torch.arange(8))
    assert torch.allclose(terms["loss_label_target"], 3.0 * ((out["image"] - out["label"]) ** 2).mean())
    method.zero_grad(set_to_none=True)
    terms["loss_label_target"].backward()
    assert any(p.grad is not None for p in method.image_net.parameters())
    assert all(p.grad is None for p in method.label_net.parameters())
    assert "loss_label_target" not in make()[0].compute_losses(x[:8], y[:8], torch.arange(8))[0]
