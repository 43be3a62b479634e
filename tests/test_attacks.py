"""Attack invariants, analytic cases, monotonicity, and an independent cross-check against foolbox."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch
import torch.nn.functional as F

import lib.attacks as A
from lib.errors import ConfigError
from lib.evaluate import accuracy, robust_accuracy

BUDGETED = [
    ("fgsm", dict(eps=0.1), "linf"),
    ("bim", dict(eps=0.1, steps=5), "linf"),
    ("pgd", dict(eps=0.1, steps=5), "linf"),
    ("pgd", dict(eps=1.0, steps=5, norm="l2", restarts=2), "l2"),
    ("fgm", dict(eps=1.0), "l2"),
    ("mim", dict(eps=1.0, steps=5), "l2"),
    ("mim", dict(eps=0.1, steps=5, norm="linf"), "linf"),
]


@pytest.mark.parametrize("name,params,norm", BUDGETED)
def test_budgeted_attack_invariants(trained_cnn, test_batch, name, params, norm):
    x, y = test_batch[0][:50], test_batch[1][:50]
    trained_cnn.train()
    flags = [p.requires_grad for p in trained_cnn.parameters()]
    x_adv = A.get(name)(trained_cnn, x, y, **params)
    assert trained_cnn.training, "train mode must be restored"
    assert flags == [p.requires_grad for p in trained_cnn.parameters()]
    trained_cnn.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= params["eps"] * (1 + 1e-5) + 1e-6).all()
    assert accuracy(trained_cnn, x_adv, y) < accuracy(trained_cnn, x, y)


@pytest.mark.parametrize("name", ["deepfool", "cw_l2"])
def test_minimal_attacks_shape_box_mode(trained_cnn, test_batch, name):
    x, y = test_batch[0][:20], test_batch[1][:20]
    trained_cnn.train()
    x_adv = A.get(name)(trained_cnn, x, y, steps=10)
    assert trained_cnn.training
    trained_cnn.eval()
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1


def test_fgsm_equals_analytic_answer_on_linear_model(linear_model):
    x = torch.full((2, 1, 4, 4), 0.5)
    y = torch.tensor([0, 2])
    W = linear_model[1].weight.detach()
    # d CE / d x = W^T (softmax(z) - onehot(y)); FGSM moves each pixel by eps * its sign.
    p = F.softmax(linear_model(x), 1).detach()
    grad = (p - F.one_hot(y, 3).float()) @ W
    expected = (x + 0.1 * grad.sign().view_as(x)).clamp(0, 1)
    assert torch.allclose(A.fgsm(linear_model, x, y, eps=0.1), expected)


def test_fgm_is_an_l2_step_along_the_gradient_on_linear_model(linear_model):
    x = torch.full((1, 1, 4, 4), 0.5)
    y = torch.tensor([1])
    W = linear_model[1].weight.detach()
    grad = ((F.softmax(linear_model(x), 1).detach() - F.one_hot(y, 3).float()) @ W).view_as(x)
    expected = x + 0.2 * grad / grad.norm()
    assert torch.allclose(A.fgm(linear_model, x, y, eps=0.2), expected, atol=1e-6)


def test_more_pgd_steps_never_raise_accuracy(trained_cnn, test_batch):
    x, y = test_batch
    accs = [
        robust_accuracy(trained_cnn, x, y, A.pgd, eps=0.1, steps=s, step_size=0.025, random_start=False)
        for s in (1, 5, 20)
    ]
    assert accs[0] >= accs[1] >= accs[2]


def test_restarts_never_raise_accuracy(trained_cnn, test_batch):
    x, y = test_batch
    one = robust_accuracy(trained_cnn, x, y, A.pgd, eps=0.08, steps=5)
    three = robust_accuracy(trained_cnn, x, y, A.pgd, eps=0.08, steps=5, restarts=3)
    assert three <= one


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, y: A.fgsm(m, x, y, eps=-0.1),
        lambda m, x, y: A.pgd(m, x, y, eps=float("nan")),
        lambda m, x, y: A.pgd(m, x, y, eps=0.1, steps=0),
        lambda m, x, y: A.pgd(m, x, y, eps=0.1, norm="l7"),
        lambda m, x, y: A.fgsm(m, x * float("nan"), y, eps=0.1),
        lambda m, x, y: A.fgsm(m, x + 2, y, eps=0.1),
        lambda m, x, y: A.get("nope"),
    ],
)
def test_bad_attack_input_raises_one_clear_error(trained_cnn, test_batch, call):
    with pytest.raises(ConfigError):
        call(trained_cnn, *test_batch)


# ---- independent cross-check: foolbox 3.3.4 on the same model and batch -----------------------


def _fb_accuracy(model, x, y, attack, eps):
    _, _, success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
    return 1 - float(success.float().mean())


@pytest.mark.parametrize(
    "ours,kwargs,theirs",
    [
        (A.fgsm, dict(eps=0.1), fb.attacks.FGSM()),
        (A.pgd, dict(eps=0.1, steps=40, step_size=0.01), fb.attacks.LinfPGD(steps=40, abs_stepsize=0.01)),
        (A.pgd, dict(eps=1.5, steps=40, step_size=0.1, norm="l2"), fb.attacks.L2PGD(steps=40, abs_stepsize=0.1)),
        (A.fgm, dict(eps=1.5), fb.attacks.FGM()),
        # foolbox has no MIM; its closest peer is L2 basic iterative with the same step budget.
        (
            A.mim,
            dict(eps=1.5, steps=20, step_size=0.15, norm="l2"),
            fb.attacks.L2BasicIterativeAttack(steps=20, abs_stepsize=0.15),
        ),
    ],
    ids=["fgsm", "pgd_linf", "pgd_l2", "fgm", "mim_vs_l2bim"],
)
def test_accuracy_at_most_foolbox_plus_one_point(trained_cnn, test_batch, ours, kwargs, theirs):
    x, y = test_batch
    torch.manual_seed(0)
    acc_ours = robust_accuracy(trained_cnn, x, y, ours, **kwargs)
    acc_fb = _fb_accuracy(trained_cnn, x, y, theirs, kwargs["eps"])
    assert acc_ours < accuracy(trained_cnn, x, y)
    assert acc_ours <= acc_fb + 0.01, (acc_ours, acc_fb)


@pytest.mark.parametrize(
    "ours,kwargs,theirs",
    [
        (A.deepfool, dict(steps=50), fb.attacks.L2DeepFoolAttack(steps=50)),
        (A.cw_l2, dict(steps=100, binary_steps=5), fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100)),
    ],
    ids=["deepfool", "cw_l2"],
)
def test_minimal_perturbation_success_and_norm_vs_foolbox(trained_cnn, test_batch, ours, kwargs, theirs):
    x, y = test_batch
    keep = trained_cnn(x).argmax(1) == y
    x, y = x[keep][:100], y[keep][:100]
    adv_ours = ours(trained_cnn, x, y, **kwargs)
    _, adv_fb, _ = theirs(fb.PyTorchModel(trained_cnn, bounds=(0, 1)), x, y, epsilons=None)
    with torch.no_grad():
        ok_ours = trained_cnn(adv_ours).argmax(1) != y
        # foolbox returns an all-zeros image where it found nothing: that is a failure, not a success.
        ok_fb = (trained_cnn(adv_fb).argmax(1) != y) & (adv_fb.flatten(1).abs().sum(1) > 0)
    assert ok_ours.float().mean() >= ok_fb.float().mean()
    both = ok_ours & ok_fb
    assert both.sum() > 10
    n_ours = (adv_ours - x).flatten(1).norm(dim=1)[both].mean()
    n_fb = (adv_fb - x).flatten(1).norm(dim=1)[both].mean()
    assert n_ours <= 1.05 * n_fb, (float(n_ours), float(n_fb))
