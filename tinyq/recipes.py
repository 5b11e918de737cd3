"""Recipes: a name -> a float Keras model and its input contract.

Recipe modules live in the top-level ``models/`` folder (installed as ``tinyq/models``);
each defines ``RECIPE``. ``tinyq models`` lists them.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tinyq.contract import InputContract
from tinyq.errors import expected_one_of


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    build: Callable
    resolution: int
    labels: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    pretrained: str | None = None  # a float Keras model shipped in models/, the default start

    @property
    def pretrained_path(self) -> Path | None:
        """The shipped pretrained float model, or None when the recipe has none."""
        return models_dir() / self.pretrained if self.pretrained else None

    def contract(self, channels: int = 3) -> InputContract:
        return InputContract(self.resolution, channels, self.value_range, self.labels)

    def model(self, channels: int = 3):
        return self.build(resolution=self.resolution, channels=channels, num_classes=len(self.labels))

    @property
    def card(self) -> str:
        path = models_dir() / f"{self.name.replace('-', '_')}.md"
        return path.read_text() if path.exists() else ""


def models_dir() -> Path:
    """``tinyq/models`` when installed, the checkout's top-level ``models/`` otherwise."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent / "models"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("tinyq's models/ folder is missing from the installation")


@functools.lru_cache(maxsize=None)
def all_recipes() -> dict[str, Recipe]:
    """The recipes of ``models/``, by name; their modules run once per process (a config asks often)."""
    out = {}
    for path in sorted(models_dir().glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"tinyq_recipe_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        recipe = getattr(module, "RECIPE", None)
        if isinstance(recipe, Recipe):
            out[recipe.name] = recipe
    return out


def get(name: str) -> Recipe:
    recipes = all_recipes()
    if name not in recipes:
        raise expected_one_of("recipe", sorted(recipes), name)
    return recipes[name]
