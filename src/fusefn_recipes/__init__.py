"""fusefn recipes: click scripts, one per worked example.

They live in the package ``fusefn_recipes`` so ``fusefn demo`` works from any
install; ``recipes/`` at the repository root points here, so
``python recipes/digits.py all`` works from a checkout.
"""
