"""Recipes: experiments built on the library's training package, above it and below the command line.

``demo`` (``opdkit demo``) trains the paired methods on the tiny task and prints the comparison table;
``compare`` (``opdkit compare``) runs configs × seeds with the same budget and compares them paired by seed.
They are built from ``opdkit.train`` (with ``eval``'s plots and ``core``'s paired statistics); nothing in the
library imports a recipe.
"""
