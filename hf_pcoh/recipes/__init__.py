"""The built-in recipes (YAML files of ``DistillationConfig`` fields beside this module) and reading any
recipe file into a dict of config fields, checked against the config's field names."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import unknown_name_message

logger = logging.getLogger(__name__)

DEFAULT_RECIPE = "minilm-wordnet-pc"  # the registered experiment's decision (docs/study.md)


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped in ``hf_pcoh/recipes``, by name."""
    folder = resources.files("hf_pcoh") / "recipes"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def is_recipe_argument(argument: str) -> bool:
    """Whether a command-line argument names a recipe (a YAML/JSON file or a built-in recipe's name).

    Every argument that is not an option is: the commands take no other positional argument, so a word that
    names no recipe (a mistyped name) is answered by :func:`read_recipe` as a recipe not found, listing the
    built-in ones, rather than by the parser as an argument not used."""
    return not argument.startswith("-")


def read_recipe(recipe: str) -> dict[str, Any]:
    """Load a recipe file, or a built-in recipe by name, into a dict of config fields."""
    from ..config import DistillationConfig  # the config imports the losses; recipes are read before either is needed

    recipes = builtin_recipes()
    path = recipes.get(recipe, Path(recipe))
    if not path.is_file():
        raise ValueError(f"recipe {recipe!r} not found (no such file); "
                         f"{unknown_name_message('built-in recipe', recipe, list(recipes))} Or give the path of a "
                         "YAML or JSON recipe file.")
    try:
        with path.open(encoding="utf-8") as stream:
            values = json.load(stream) if path.suffix == ".json" else yaml.safe_load(stream)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        place = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}{place}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"recipe {path} is not a text file (YAML or JSON)") from None
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a mapping of config fields, got {type(values).__name__}")
    known = list(DistillationConfig.__dataclass_fields__)
    for key in values:
        if key not in known:
            raise ValueError(f"recipe {path}: {unknown_name_message('field', key, known)}")
    if values.pop("trust_remote_code", None):
        logger.warning("recipe %s sets trust_remote_code: true, which is ignored: a file never turns on running a "
                       "checkpoint's own code; pass --trust_remote_code on the command line if you trust it", path)
    return values
