"""Views of ordinary cuda tensors inside ``torch.inference_mode()``.

On a GPU (and on CPU), a view of a tensor created outside inference mode is an ordinary tensor
that shares its base's version counter. ``with torch.inference_mode(): model(x)`` depends on it:
nn.Linear transposes its weight, attention reshapes, every model takes views.
"""

from __future__ import annotations

import pytest
import torch

NATIVE_VIEW_KEYS = (
    "native core: a view output of the fallback (rebase_view) is relabelled with the key set a new "
    "tensor gets in inference mode (no ADInplaceOrView/Autograd keys), so it is an inference tensor and "
    "ADInplaceOrView's as_view fails with 'Cannot set version_counter for inference tensor'. A view must "
    "take its base's (the original input's) autograd-related keys, as alias_with_sizes_and_strides "
    "builds its TensorImpl::VIEW from self.key_set()"
)


def test_views_of_ordinary_tensors_in_inference_mode():
    x = torch.randn(2, 8, device="cuda")
    with torch.inference_mode():
        view = x.t()
        assert not view.is_inference()
        assert view._version == x._version


def test_module_forward_in_inference_mode():
    linear = torch.nn.Linear(8, 4).cuda()
    x = torch.randn(2, 8, device="cuda")
    with torch.inference_mode():
        out = linear(x)  # F.linear takes weight.t()
    assert out.is_cuda and out.is_inference()
