"""Mixed precision: bf16 autocast, fp16 with a gradient scaler; losses and codes stay fp32."""
import numpy as np
import pytest
import torch
from torch import nn

from schn.config import TrainConfig
from schn.errors import SchnError
from schn.methods import create_method, list_methods
from schn.precision import Precision

N, K, D, BITS = 24, 3, 16, 12


def test_precision_kinds():
    assert Precision("fp32").autocast().__class__.__name__ == "nullcontext"
    with Precision("bf16").autocast():
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    with pytest.raises(SchnError, match="fp32, bf16, fp16"):
        Precision("int8")
    with pytest.raises(SchnError, match="train.precision"):
        TrainConfig(precision="half")


def test_fp16_scaler_state_survives_a_round_trip():
    a = Precision("fp16")
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), 0.1)
    with a.autocast():
        loss = net(torch.randn(3, 4)).float().pow(2).mean()
    a.backward(loss)
    a.step(opt)
    a.update()
    b = Precision("fp16")
    b.load_state_dict(a.state_dict())
    assert b.scaler.get_scale() == a.scaler.get_scale()


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
@pytest.mark.parametrize("name", [m for m in list_methods() if m not in ("itq", "lsh", "sdh")])
def test_every_deep_method_trains_in_mixed_precision(name, kind):
    torch.manual_seed(0)
    labels = torch.eye(K)[torch.arange(N) % K]
    backbone = nn.Sequential(nn.Linear(D, D), nn.ReLU())  # a trainable backbone, so autocast has work
    method = create_method(name, None, backbone, D, K, BITS, labels, "cpu")
    method.precision = Precision(kind)
    x = torch.randn(N, D)
    method.train()
    method.begin_iteration(0, np.arange(N))
    for start in range(0, N, 8):
        pos = torch.arange(start, start + 8)
        terms = method.training_step(x[pos], labels[pos], pos, record=True)
        assert all(np.isfinite(v) for v in terms.values()), terms
    method.end_iteration()
    assert method.encode(x).dtype == torch.float32  # codes are computed in fp32
