"""torchvision's resnet18 and mobilenet_v3_small, swapped and trained as the untouched model,
in float64 (tests/models/test_hf_models.py explains the tolerance).

torchvision is not a test dependency: the wheels on the registry here are built for CUDA
torch and fail to import next to the CPU torch ("operator torchvision::nms does not
exist"), so these run only where a matching torchvision imports; elsewhere Hugging Face's
ResNet and MobileNetV2 (test_hf_models.py) cover BatchNorm2d in a real network."""
from __future__ import annotations

import copy

import pytest
import torch

try:
    from torchvision import models
except Exception as e:               # noqa: BLE001 - a broken install raises RuntimeError
    pytest.skip(f"torchvision does not import here: {type(e).__name__}: {e}",
                allow_module_level=True)

import fromscratch.nn as fnn  # noqa: E402
from fromscratch.nn import swap  # noqa: E402

from ._twins import train_alike  # noqa: E402


def step(model, batch):
    x, labels = batch
    y = model(x)
    return y, torch.nn.functional.cross_entropy(y, labels)


@pytest.mark.parametrize("build", [lambda: models.resnet18(num_classes=5),
                                   lambda: models.mobilenet_v3_small(num_classes=5,
                                                                     dropout=0.0)],
                         ids=["resnet18", "mobilenet_v3_small"])
def test_torchvision_model_trains_as_the_original(build):
    torch.manual_seed(0)
    ref = build().double()
    model = copy.deepcopy(ref)
    report = swap(model, backend="torch")
    assert fnn.BatchNorm2d in {type(m) for m in model.modules()} and not report.refused
    g = torch.Generator().manual_seed(2)
    images = [(torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64),
               torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]
    train_alike(ref, model, images, step, lr=0.01, tol=1e-8)
    ref.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-8, atol=1e-8)
