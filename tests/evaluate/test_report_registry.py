"""What the registry checks of a family's declaration before any report holds its figures."""

from __future__ import annotations

import pytest

from saelab.evaluate import Family, families, family, register
from saelab.evaluate import _registry as registry


def test_register_refuses_a_conditional_figure_the_family_does_not_return(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    class Stray(Family):
        """Declares a conditional figure it never returns."""

        figures = ("a", "b")
        headline = ("a",)
        conditional = ("b", "c")

    with pytest.raises(ValueError, match=r"conditional figures \['c'\]"):
        register("stray_conditional")(Stray)
    assert "stray_conditional" not in registry._FAMILIES

    class Fine(Family):
        """Its conditional figure is one of its figures."""

        figures = ("a", "b")
        headline = ("a",)
        conditional = ("b",)

    assert register("fine_conditional")(Fine) is Fine


def test_every_registered_family_declares_conditional_figures_among_its_figures():
    for name in families():
        assert set(family(name).conditional) <= set(family(name).figures), name
