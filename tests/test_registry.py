import pytest

from clipo.registry import Registry


def test_register_get_build_and_names():
    registry = Registry("widget")

    @registry.register("scaled")
    class Scaled:
        def __init__(self, factor: float = 1.0):
            self.factor = factor

    assert registry.names() == ["scaled"]
    assert registry.get("scaled") is Scaled
    assert registry.build({"name": "scaled", "factor": 3.0}).factor == 3.0
    assert registry.build({"name": "scaled"}, factor=2.0).factor == 2.0


def test_unknown_name_lists_choices():
    registry = Registry("widget")
    registry.register("a")(object)
    registry.register("b")(dict)
    with pytest.raises(KeyError, match=r"unknown widget 'c'; choose one of: a, b"):
        registry.get("c")


def test_duplicate_name_for_another_object_raises():
    registry = Registry("widget")
    registry.register("a")(object)
    registry.register("a")(object)  # the same object again (module re-import) is fine
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(dict)
