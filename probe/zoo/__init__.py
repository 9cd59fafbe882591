"""The model zoo: recipes, training, cards, and the shipped checkpoints (one folder per model).

``probe.load("zoo:NAME")`` loads a shipped model; ``probe zoo list`` prints the table;
``probe zoo train NAME`` retrains one from its recipe.
"""
from probe.zoo.recipes import RECIPES, TARGET_PARAMS, TRAIN, Recipe, available_recipes, get_recipe

__all__ = ["RECIPES", "TARGET_PARAMS", "TRAIN", "Recipe", "available_recipes", "get_recipe"]
