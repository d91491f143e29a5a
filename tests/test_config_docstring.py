"""``DistillationConfig``'s docstring documents the distillation fields as TRL's configs do (an ``Args:`` entry
per field), and it names exactly the fields that carry a ``--help`` text, in the same order."""

from __future__ import annotations

import inspect
import re
from dataclasses import Field, fields

from hf_pcoh.config import DistillationConfig

# ``name (`type`, *optional*, defaults to `value`):`` then the description, indented one level more.
ENTRY = re.compile(r"^    (\w+) \((.+)\):\n((?:        \S.*\n?)+)", flags=re.M)


def distillation_fields() -> dict[str, Field]:
    """The fields DistillationConfig declares itself (its own, and the TrainingArguments ones it redefines), in the
    order of its class body."""
    by_name = {field.name: field for field in fields(DistillationConfig)}
    return {name: by_name[name] for name in inspect.get_annotations(DistillationConfig) if name in by_name}


def documented_arguments() -> dict[str, str]:
    """``{field: description}`` from the ``Args:`` section of the docstring, in its order."""
    documentation = inspect.getdoc(DistillationConfig) or ""
    assert re.search(r"^Args:$", documentation, flags=re.M), "DistillationConfig's docstring has no Args: section"
    section = documentation.split("\nArgs:\n", 1)[1]
    return {name: " ".join(description.split()) for name, _, description in ENTRY.findall(section)}


def test_every_distillation_field_has_a_help_text() -> None:
    missing = [name for name, field in distillation_fields().items() if not field.metadata.get("help", "").strip()]
    assert not missing, f"fields without metadata['help'] (the --help text): {missing}"


def test_the_docstring_documents_exactly_the_fields_with_a_help_text_in_their_order() -> None:
    with_help = [name for name, field in distillation_fields().items() if field.metadata.get("help")]
    documented = documented_arguments()
    undocumented = [name for name in with_help if name not in documented]
    not_fields = [name for name in documented if name not in with_help]
    assert not undocumented, f"fields missing from DistillationConfig's Args: docstring section: {undocumented}"
    assert not not_fields, f"DistillationConfig's Args: documents {not_fields}, which are not its fields (renamed or removed?)"
    assert list(documented) == with_help, "the Args: entries are not in the order the fields are declared"
    assert all(documented.values()), [name for name, description in documented.items() if not description]
