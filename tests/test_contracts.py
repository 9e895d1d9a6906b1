"""Contract tests over every registered entry: a method added later is checked the same way."""
import numpy as np
import pytest
import torch
from torch import nn

from schn.backbones import list_backbones
from schn.cli import main
from schn.data import list_datasets, list_splits
from schn.evaluate import binarize
from schn.methods import METHODS, create_method, list_methods

N, K, D, BITS = 24, 3, 16, 12


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    torch.manual_seed(0)
    labels = torch.eye(K)[torch.arange(N) % K]
    method = create_method(name, None, nn.Identity(), D, K, BITS, labels, "cpu")
    assert method.bits == BITS
    x = torch.randn(N, D)
    sample = np.arange(N)
    method.train()
    method.begin_iteration(0, sample)
    for start in range(0, N, 8):
        pos = torch.arange(start, start + 8)
        terms = method.training_step(x[pos], labels[pos], pos, record=True)
        assert terms and all(np.isfinite(v) for v in terms.values())
    assert isinstance(method.end_iteration(), dict)
    real = method.encode(x)
    assert real.shape == (N, BITS)
    signed = binarize(method, real)
    assert set(signed.unique().tolist()) <= {-1.0, 1.0}
    learned = method.database_codes()
    if learned is not None:
        assert learned.shape == (N, BITS)
        method.set_database_codes(torch.tensor([0, 1]), torch.ones(2, BITS))
        assert (method.database_codes()[:2] == 1).all()
    # save then load gives identical codes
    again = create_method(name, None, nn.Identity(), D, K, BITS, labels, "cpu")
    again.load_state_dict(method.state_dict())
    again.eval()
    method.eval()
    assert torch.equal(binarize(again, again.encode(x)), binarize(method, method.encode(x)))
    if learned is not None:
        assert torch.equal(again.database_codes(), method.database_codes())
    assert hasattr(METHODS.get(name), "config_class")


def test_list_command_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*list_methods(), *list_backbones(), *list_datasets(), *list_splits()]:
        assert f'"{name}"' in out
