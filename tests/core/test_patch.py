"""The patch registry (torchdevice.core.patch) and ``torchdevice.patches()``."""

from __future__ import annotations

import collections
import inspect
import types

import pytest

import torch
import torchdevice
from torchdevice.core.patch import REGISTRY, Patch, PatchRegistry


def make_target() -> types.ModuleType:
    module = types.ModuleType("dummy")
    module.answer = lambda: 1
    module.value = 10
    return module


def test_patch_replaces_and_records():
    target, registry = make_target(), PatchRegistry()
    original = target.answer
    replacement = registry.patch(target, "answer", lambda: 2, owner="tests")
    assert target.answer is replacement and target.answer() == 2
    (patch,) = list(registry)
    assert patch == Patch(target, "answer", original, replacement, "tests")
    assert patch.qualname == "dummy.answer"
    assert not patch.added


def test_patch_of_a_missing_attribute_is_an_addition():
    target, registry = make_target(), PatchRegistry()
    registry.patch(target, "new_api", lambda: 3, owner="tests")
    (patch,) = list(registry)
    assert patch.added
    registry.undo_all()
    assert not hasattr(target, "new_api")


def test_undo_all_restores_in_reverse_order():
    target, registry = make_target(), PatchRegistry()
    original = target.answer
    registry.patch(target, "answer", lambda: 2, owner="tests")
    registry.patch(target, "answer", lambda: 3, owner="tests")  # patched twice: undo must unwind both
    registry.patch(target, "value", 20, owner="tests")
    assert len(registry) == 3
    registry.undo_all()
    assert target.answer is original
    assert target.value == 10
    assert len(registry) == 0 and list(registry) == []


def test_undo_of_a_class_attribute_restores_inheritance():
    class Base:
        def method(self):
            return "base"

    class Child(Base):
        pass

    registry = PatchRegistry()
    registry.patch(Child, "method", lambda self: "patched", owner="tests")
    assert Child().method() == "patched"
    assert list(registry)[0].added  # Child had no method of its own
    registry.undo_all()
    assert Child().method() == "base"
    assert "method" not in Child.__dict__


def test_a_class_rebased_by_a_patch_gets_its_bases_back():
    class Dummy:
        pass

    class Real:
        def method(self):
            return "real"

    class Child(Dummy):
        pass

    registry = PatchRegistry()
    registry.patch(Child, "__bases__", (Real,), owner="tests")
    assert Child().method() == "real"
    assert not list(registry)[0].added  # every class has bases: this replaces them
    registry.undo_all()
    assert Child.__bases__ == (Dummy,)


def test_patch_function_decorator():
    target, registry = make_target(), PatchRegistry()

    @registry.patch_function(target, "answer", owner="tests")
    def answer():
        return 42

    assert target.answer is answer and answer.__torchdevice_patch__
    assert target.answer() == 42


def test_describe_lists_every_patch():
    target, registry = make_target(), PatchRegistry()
    registry.patch(target, "answer", lambda: 2, owner="tests.a")
    registry.patch(target, "extra", 1, owner="tests.b")
    lines = registry.describe().splitlines()
    assert lines[0] == "2 patches applied by torchdevice:"
    assert lines[1].split() == ["dummy.answer", "replaced", "(tests.a)"]
    assert lines[2].split() == ["dummy.extra", "added", "(tests.b)"]


def test_iteration_is_a_snapshot():
    target, registry = make_target(), PatchRegistry()
    registry.patch(target, "answer", lambda: 2, owner="tests")
    for _ in registry:
        registry.patch(target, "value", 3, owner="tests")  # must not extend the running loop
    assert len(registry) == 2


# ---------------------------------------------------------------- the process-wide registry


def test_patches_prints_and_returns_the_registry(capsys):
    returned = torchdevice.patches()
    out = capsys.readouterr().out
    assert out == REGISTRY.describe() + "\n"
    assert returned == list(REGISTRY)
    assert out.startswith(f"{len(REGISTRY)} patches applied by torchdevice:")
    names = {p.qualname for p in returned}
    assert {"torch.cuda.is_available", "torch.cuda.device_count", "torch.cuda._lazy_init"} <= names


def test_registered_patches_are_in_place():
    for patch in REGISTRY:
        if patch.native:
            # A C slot, not an attribute: test_legacy_types checks its behaviour.
            assert patch.undo is not None, patch.qualname
            continue
        # getattr_static: a staticmethod replacement would otherwise come back unwrapped.
        assert inspect.getattr_static(patch.target, patch.name) is patch.replacement, patch.qualname


def test_distinct_functions_get_distinct_replacements():
    # torch._dynamo keeps handlers per function object and rejects one registered twice, so two
    # different torch functions must never be replaced by one object. One function reachable
    # under two names (torch.cuda.mem_get_info is torch.cuda.memory.mem_get_info) may share one.
    originals_by_replacement: dict[int, set[int]] = collections.defaultdict(set)
    for patch in REGISTRY:
        if isinstance(patch.replacement, types.FunctionType) and not patch.added:
            originals_by_replacement[id(patch.replacement)].add(id(patch.original))
    shared = {k: v for k, v in originals_by_replacement.items() if len(v) > 1}
    assert not shared, [p.qualname for p in REGISTRY if id(p.replacement) in shared]


@pytest.mark.parametrize("name", ["is_available", "device_count", "current_device", "synchronize"])
def test_torch_cuda_answers_through_patches(name):
    # By identity: some replacements (inductor's GPU_TYPES list, patched on first compile) are unhashable.
    assert any(getattr(torch.cuda, name) is p.replacement for p in REGISTRY)
