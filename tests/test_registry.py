"""Typed registries (harness.registry): ``get`` returns the entry itself, imported on first use and checked
against the registry's type; ``check`` and ``names`` import nothing. Every registry of the harness resolves
each of its entries to the type it declares (a new entry gets this test for free)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from harness.registry import Registry, UnknownName


def test_get_resolves_lazily_and_checks_the_type():
    reg: Registry[Callable] = Registry("thing", of=Callable)
    reg.register("dumps", "json:dumps")
    reg.register("pi", "math:pi")
    reg.register("wave", "wave:open")  # a stdlib module this process has not imported
    sys.modules.pop("wave", None)
    reg.check("wave")
    assert "wave" not in sys.modules and reg.names() == ["dumps", "pi", "wave"]
    import json
    assert reg.get("dumps") is json.dumps
    assert reg.get("wave").__module__ == "wave" and "wave" in sys.modules
    with pytest.raises(TypeError, match=r"thing 'pi' \(math:pi\) is 3\.14.*expected a Callable"):
        reg.get("pi")
    with pytest.raises(UnknownName, match="unknown thing 'dump'; did you mean 'dumps'"):
        reg.get("dump")
    with pytest.raises(UnknownName):
        reg.check("nothing")


def test_classes_registry_checks_subclasses_and_resolves_its_type_lazily():
    reg: Registry[type] = Registry("error", of="builtins:LookupError", classes=True)
    reg.register("key", KeyError)
    reg.register("value", "builtins:ValueError")
    assert reg.get("key") is KeyError
    with pytest.raises(TypeError, match="expected a subclass of LookupError"):
        reg.get("value")


def _registries():
    from harness.data import DATASETS
    from harness.models import MODELS, PRUNE_ADAPTERS, VARIANTS
    from harness.runners import RUNNERS
    from harness.tasks import TASKS
    return {"dataset": DATASETS, "model": MODELS, "variant": VARIANTS, "adapter": PRUNE_ADAPTERS,
            "runner": RUNNERS, "task": TASKS}


@pytest.mark.parametrize("kind", ["dataset", "model", "variant", "adapter", "runner", "task"])
def test_every_registered_entry_resolves_to_its_type(kind):
    reg, resolved = _registries()[kind], 0
    for name in reg.names():
        try:
            reg.get(name)  # raises TypeError on a wrong type
        except ImportError:  # an optional backend this environment lacks (timm, ultralytics, hf)
            continue
        resolved += 1
    assert resolved, f"no {kind} could be imported"
