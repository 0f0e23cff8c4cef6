import pytest

from opdkit.core.registry import Registry, UnknownNameError


def test_unknown_name_lists_valid_names():
    reg: Registry[int] = Registry("method")
    reg.add("grpo", 1)
    reg.add("opd", 2)
    with pytest.raises(UnknownNameError, match=r"unknown method 'scop'; valid methods: grpo, opd"):
        reg.get("scop")
    assert reg.get("opd") == 2
    assert list(reg) == ["grpo", "opd"]


def test_double_registration_refused():
    reg: Registry[int] = Registry("verifier")

    @reg.register("x")
    def f():
        return 1

    assert reg.get("x") is f
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x", 3)
