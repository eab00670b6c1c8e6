"""Finding recipes: the entry-point group ``fusefn.recipes``.

A package adds a recipe by declaring, in its ``pyproject.toml``::

    [project.entry-points."fusefn.recipes"]
    my_recipe = "my_package.my_recipe:RECIPE"

where ``RECIPE`` is a :class:`fusefn.recipe.Recipe`. Once the package is installed,
``fusefn recipes`` lists it and ``fusefn cache build my_recipe`` / ``fusefn visualize
my_recipe`` accept it. The entry points are read when asked, never at import.

>>> "digits" in names()
True
>>> find("digits").name
'digits'
"""

from __future__ import annotations

from importlib import metadata

from fusefn.errors import FusefnError
from fusefn.recipe.recipe import Recipe

__all__ = ["GROUP", "names", "find"]

GROUP = "fusefn.recipes"


def _entry_points() -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def names() -> list[str]:
    """The names of the installed recipes, sorted."""
    return sorted(_entry_points())


def find(name: str) -> Recipe:
    """The :class:`Recipe` registered as ``name``; a :class:`~fusefn.FusefnError` naming the known ones if none is."""
    eps = _entry_points()
    if name not in eps:
        raise FusefnError(f"unknown recipe {name!r}; `fusefn recipes` lists them: {', '.join(sorted(eps))}")
    recipe = eps[name].load()
    if not isinstance(recipe, Recipe):
        raise FusefnError(f"entry point {name} = {eps[name].value} in {GROUP} is not a fusefn.recipe.Recipe")
    return recipe
