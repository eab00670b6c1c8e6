"""fusefn recipes: click scripts, one per worked example, built on :mod:`fusefn.recipe`.

Each module defines a :class:`fusefn.recipe.Recipe` named ``RECIPE`` (registered under
the entry-point group ``fusefn.recipes`` in ``pyproject.toml``) and its click group
``cli``. They live in this package so ``fusefn demo`` works from any install;
``recipes/`` at the repository root points here, so ``python recipes/digits.py all``
works from a checkout. :mod:`fusefn_recipes.phantoms` makes their synthetic data.
"""
