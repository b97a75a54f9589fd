"""inceptionctl: train, evaluate, export and profile GoogLeNet / Inception v1."""

from .errors import CheckFailed, InceptionError
from .recipe import Recipe, RecipeError, available_recipes, load_recipe

__version__ = "0.1.0"

__all__ = ["CheckFailed", "InceptionError", "Recipe", "RecipeError", "__version__",
           "available_recipes", "build_model", "load_recipe", "load_weights"]


def build_model(recipe):  # noqa: D401 - thin lazy wrapper keeps `import inceptionctl` light
    """Return a freshly initialised GoogLeNet for ``recipe`` (see :mod:`inceptionctl.model`)."""
    from .model import build_model as _build

    return _build(recipe if isinstance(recipe, Recipe) else load_recipe(recipe))


def load_weights(model, path, reset_head=False, strict=True):
    """Load our checkpoint or a torchvision state dict into ``model`` (see :mod:`inceptionctl.checkpoint`)."""
    from .checkpoint import load_weights as _load

    return _load(model, path, reset_head=reset_head, strict=strict)
