"""The contract every feature-distillation loss follows, and the name -> class registry.

A loss is an ``nn.Module`` built from the widths of the two feature spaces it compares
(``student_dim``, ``teacher_dim``) plus its own keyword options, so losses that need learned
parameters (a FitNets projector, CosPress's compression of the teacher space) own them and the
trainer optimises and saves them with the student.

Calling it as ``loss(student, teacher, mask=None, labels=None)`` returns a scalar tensor.
``student`` is ``[B, d_s]`` (pooled) or ``[B, T, d_s]`` (tokens, with ``mask`` ``[B, T]``);
``teacher`` has the same leading shape with width ``d_t``.

A new loss is one file: a :class:`DistillationLoss` subclass decorated with :func:`register_loss`, in
``hf_pcoh/losses/`` (imported with the package) or anywhere else (imported before use, or named in
``HF_PCOH_LOSS_MODULES``, :mod:`.external`). The registry is the one list of losses: recipes, ``--help``,
the package exports, the citations of model cards and the sentence-transformers wrappers all read it, and
the tests hold every registered loss to the contract its class attributes declare.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import types
import typing
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import unknown_name_message

LOSSES: dict[str, type["DistillationLoss"]] = {}


# What a loss may declare in ``invariances``: transformations of its inputs that leave its value unchanged
# (with its default options). tests/loss_contract.py checks each declared one on every registered loss.
INVARIANCES: dict[str, str] = {
    "student_rotation": "an orthogonal map of the student's feature space (S -> S Q)",
    "teacher_rotation": "an orthogonal map of the teacher's feature space (T -> T Q)",
    "student_scale": "multiplying the student's features by a positive number",
    "teacher_scale": "multiplying the teacher's features by a positive number",
    "student_translation": "adding one vector to every student feature",
    "teacher_translation": "adding one vector to every teacher feature",
    "batch_permutation": "reordering the examples of the batch (both sides alike)",
}
# What a loss compares: features (any layer, any widths unless ``equal_widths``) or class logits.
INPUT_KINDS = ("features", "logits")


def register_loss(cls: type["DistillationLoss"]) -> type["DistillationLoss"]:
    """Class decorator: make ``cls`` available as ``LOSSES[cls.name]`` (and in recipes by that name).

    Checks the class's declarations (:class:`DistillationLoss`): a ``name``, known ``invariances`` and
    ``input_kind``. A name already taken by another class is refused.
    """
    if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
        raise TypeError(f"register_loss takes a subclass of DistillationLoss, got {cls!r}")
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
    unknown = set(cls.invariances) - set(INVARIANCES)
    if unknown:
        raise TypeError(
            f"{cls.__qualname__}.invariances names {sorted(unknown)}, which are not invariances; use some of "
            f"{sorted(INVARIANCES)}"
        )
    if cls.input_kind not in INPUT_KINDS:
        raise TypeError(f"{cls.__qualname__}.input_kind={cls.input_kind!r} must be one of {INPUT_KINDS}")
    if cls.name in LOSSES and LOSSES[cls.name] is not cls:
        raise ValueError(f"a loss named {cls.name!r} is already registered ({LOSSES[cls.name].__qualname__})")
    LOSSES[cls.name] = cls
    return cls


def get_loss_class(name: str) -> type["DistillationLoss"]:
    """Return the registered loss class called ``name``; fail with the list of known names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(unknown_name_message("loss", name, list(LOSSES))) from None


def build_loss(name: str, student_dim: int, teacher_dim: int, **options: Any) -> "DistillationLoss":
    """Instantiate the loss ``name`` for the given feature widths, its options checked by :func:`check_loss_options`."""
    loss_class = get_loss_class(name)
    check_option_names_and_types(name, options)
    try:
        return loss_class(student_dim=student_dim, teacher_dim=teacher_dim, **options)
    except TypeError as error:
        raise ValueError(f"bad options for loss {name!r}: {options} ({error}). {loss_class.__doc__.splitlines()[0]}") from None


# ---- a loss's options: its constructor's keyword parameters -------------------------------------------
# The constructor's signature is the one place a loss declares its options (name, type hint, default):
# the config checks them before any model loads, and --help lists them, from that signature alone.
WIDTH_PARAMETERS = ("self", "student_dim", "teacher_dim")
# The widths a loss is test-built with when its option values are checked before the models (and their
# real widths) are known: equal, so that no width-dependent check fires (e.g. logit_kd's equal classes).
PROBE_WIDTH = 8


def loss_option_parameters(loss_class: type["DistillationLoss"]) -> dict[str, inspect.Parameter]:
    """The options of ``loss_class``: its constructor's parameters other than the widths (and ``**kwargs``)."""
    return {
        name: parameter
        for name, parameter in inspect.signature(loss_class.__init__).parameters.items()
        if name not in WIDTH_PARAMETERS and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def loss_option_types(loss_class: type["DistillationLoss"]) -> dict[str, Any]:
    """The constructor's type hints, resolved (``Any`` for an option without one)."""
    try:
        hints = typing.get_type_hints(loss_class.__init__)
    except Exception:  # a hint that does not resolve (e.g. a name imported only for type checking): unchecked
        hints = {}
    return {name: hints.get(name, Any) for name in loss_option_parameters(loss_class)}


def describe_type(annotation: Any) -> str:
    """A type hint as a user reads it: ``float``, ``int | None``, ``'std' | 'median'``, ``list of float``."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any value"
    if annotation is type(None) or annotation is None:
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(argument) for argument in arguments)
    if origin is typing.Literal:
        return " | ".join(repr(argument) for argument in arguments)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"list of {describe_type(arguments[0])}" if arguments else "list"
    if origin in (dict, collections.abc.Mapping):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def matches_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (as parsed from JSON/YAML or given in Python) fits the type hint ``annotation``.

    An int is a float; a bool is neither an int nor a float; a list or tuple is a sequence; a
    ``Literal`` checks the type of its values only (which value is allowed is the constructor's check,
    with its own advice). Hints of other forms are not checked (True).
    """
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return any(type(value) is type(argument) for argument in arguments)
    if origin in (list, tuple, collections.abc.Sequence):
        element = arguments[0] if arguments else Any
        return isinstance(value, (list, tuple)) and all(matches_type(item, element) for item in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def check_option_names_and_types(name: str, options: Any) -> dict[str, Any]:
    """Check ``options`` of loss ``name`` against its constructor's signature; return them as a dict.

    Raises ``ValueError`` for a non-mapping, an unknown option (listing the known ones) or a value whose
    type does not fit the option's type hint (naming loss, option, value and expected type).
    """
    loss_class = get_loss_class(name)
    if not isinstance(options, collections.abc.Mapping):
        example = next(iter(loss_option_parameters(loss_class)), "option")
        raise ValueError(
            f"the options of loss {name!r} must be a mapping of option names to values, e.g. "
            f"{{{name!r}: {{{example!r}: ...}}}}, got {options!r}"
        )
    parameters = loss_option_parameters(loss_class)
    open_ended = any(
        parameter.kind is parameter.VAR_KEYWORD for parameter in inspect.signature(loss_class.__init__).parameters.values()
    )
    types_by_option = loss_option_types(loss_class)
    for option, value in options.items():
        if option not in parameters:
            if open_ended:
                continue
            raise ValueError(unknown_name_message(f"{name} option", str(option), list(parameters)))
        expected = types_by_option[option]
        if not matches_type(value, expected):
            default = parameters[option].default
            default_text = "" if default is inspect.Parameter.empty else f" (default {default!r})"
            raise ValueError(
                f"option {option}={value!r} has type {type(value).__name__}, but {name} expects "
                f"{describe_type(expected)}{default_text}"
            )
    return dict(options)


def check_loss_options(name: str, options: Any) -> dict[str, Any]:
    """Validate the options of loss ``name`` before any model exists; return them as a dict.

    Names and types are checked against the constructor's signature (:func:`check_option_names_and_types`);
    the values are then checked by the constructor itself, on a throw-away instance built for equal
    ``PROBE_WIDTH``-wide features on the meta device (no memory, no draw from the random generator).
    Every error is a ``ValueError`` that starts with ``loss_kwargs[name]``.
    """
    loss_class = get_loss_class(name)
    try:
        options = check_option_names_and_types(name, options)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            loss_class(student_dim=PROBE_WIDTH, teacher_dim=PROBE_WIDTH, **options)
    except ValueError as error:
        raise ValueError(f"loss_kwargs[{name!r}]: {error}") from None
    return options


def loss_options_help() -> str:
    """Every registered loss with its options, for the help text of ``loss_kwargs``."""
    return "; ".join(f"{name}: {describe_loss_options(name)}" for name in sorted(LOSSES))


def describe_loss_options(name: str) -> str:
    """``option (type, default value)`` for each option of loss ``name``, comma-separated (for ``--help``)."""
    loss_class = get_loss_class(name)
    types_by_option = loss_option_types(loss_class)
    described = []
    for option, parameter in loss_option_parameters(loss_class).items():
        default = "required" if parameter.default is inspect.Parameter.empty else f"default {parameter.default!r}"
        described.append(f"{option} ({describe_type(types_by_option[option])}, {default})")
    return ", ".join(described) if described else "no options"


def config_value(value: Any) -> Any:
    """An option's value as JSON shows it: numbers, strings, booleans and None as they are, sequences as
    lists, mappings as dicts; any other object (a ``Dissimilarity``) by its ``name``, else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [config_value(item) for item in value]
    if isinstance(value, collections.abc.Mapping):
        return {str(key): config_value(item) for key, item in value.items()}
    return getattr(value, "name", None) or repr(value)


class DistillationLoss(nn.Module):
    """Base class of feature-distillation losses.

    Class attributes a subclass sets (its declared contract; the tests check it for every registered loss):
      * ``name``: the registry and recipe name;
      * ``citation``: the BibTeX entry of the paper the loss implements (model cards and
        :mod:`hf_pcoh.citations` read it from here);
      * ``batch_level``: True when the loss compares points of the batch with one another
        (it then must see the global batch under data parallelism, and needs ``min_batch_size`` rows);
        False means it is a mean over examples, so equal shards of a batch average to the whole;
      * ``accepts_tokens``: True when the loss can take ``[B, T, d]`` token features with a mask
        (padding positions then change nothing);
      * ``input_kind``: ``"features"`` (hidden states) or ``"logits"`` (class scores, e.g. logit KD);
      * ``equal_widths``: True when ``student_dim`` must equal ``teacher_dim``;
      * ``zero_at_agreement``: True when the value is 0 for identical student and teacher features
        (equal widths, default options);
      * ``invariances``: the transformations of the inputs that leave the value unchanged, with the
        default options: names from ``INVARIANCES`` (rotation, scale, translation of either side,
        permutation of the batch).

    A batch-level loss that is a mean over reference rows (each row scored against the whole batch) may
    let data-parallel processes split that work: :meth:`scores_row_shares` True, and ``forward`` then takes
    ``rows`` (global indices into the gathered batch) and returns the mean over those rows only; the
    trainer weighs each process's share by its rows, so the shares sum to the one-process value.

    Options are the constructor's keyword parameters after the widths, with type hints and defaults:
    they are checked (:func:`check_loss_options`), listed in ``--help`` and reported by
    :meth:`get_config_dict` from that signature alone. The docstring has ``Args:``, ``Inputs:`` and
    ``References:`` sections, as sentence-transformers' losses do.
    A loss made of several terms reports them after each call in ``parts`` (name -> detached,
    unweighted value; empty for single-term losses), and the trainer logs each one.
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    batch_level: ClassVar[bool] = False
    min_batch_size: ClassVar[int] = 1
    accepts_tokens: ClassVar[bool] = False
    input_kind: ClassVar[str] = "features"
    equal_widths: ClassVar[bool] = False
    zero_at_agreement: ClassVar[bool] = False
    invariances: ClassVar[frozenset[str]] = frozenset()

    def __new__(cls, *args: Any, **kwargs: Any) -> "DistillationLoss":
        instance = super().__new__(cls)
        # The options as the caller gave them, defaults filled in, for get_config_dict: read from the
        # constructor's signature (the one place a loss declares its options), so no loss repeats them.
        # copy.deepcopy and unpickling call __new__ without arguments: the copied __dict__ brings them.
        try:
            bound = inspect.signature(cls.__init__).bind(instance, *args, **kwargs)
        except TypeError:
            return instance
        bound.apply_defaults()
        options = {option: bound.arguments[option] for option in loss_option_parameters(cls) if option in bound.arguments}
        for parameter in bound.signature.parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:  # an open-ended loss: the extra options too
                options.update(bound.arguments.get(parameter.name, {}))
        object.__setattr__(instance, "_configured_options", options)
        return instance

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.parts: dict[str, torch.Tensor] = {}

    def get_config_dict(self) -> dict[str, Any]:
        """Every option of the loss as it was configured (defaults included), JSON-ready: what a model
        card lists, as sentence-transformers' losses report theirs. The widths are not options."""
        return {option: config_value(value) for option, value in getattr(self, "_configured_options", {}).items()}

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def untrained_parameters(self, tokens: bool) -> list[str] | None:
        """The names of this loss's parameters that its value never depends on, as configured, for token features
        ``[B, T, d]`` (``tokens``) or pooled ones: the trainer freezes them, so that every trainable parameter gets a
        gradient at every step and DDP need not search for unused ones. ``[]``: all of them train (so for a loss
        without parameters); None, the default for a loss with parameters: not declared (DDP keeps searching)."""
        return None if any(True for _ in self.parameters()) else []

    def trains_student(self, tokens: bool) -> bool:
        """Whether, as configured, the value depends on the student's features (token or pooled): a loss that only
        fits its own head does not, and DDP then keeps searching for unused parameters."""
        return True

    def scores_row_shares(self) -> bool:
        """Whether, as configured, ``forward(..., rows=...)`` scores only some reference rows of the batch
        (the value then being their mean): processes can share the rows instead of each scoring all."""
        return False

    def check_pooled_batch(self, student: torch.Tensor, teacher: torch.Tensor) -> int:
        """For losses over pooled points: ``[B, d_s]`` and ``[B, d_t]`` with ``B >= min_batch_size``; returns ``B``."""
        if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"{self.name} expects pooled features [B, d_s] and [B, d_t] with the same B, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}; use a pooling other than 'none'"
            )
        batch_size = student.shape[0]
        if batch_size < self.min_batch_size:
            raise ValueError(
                f"{self.name} needs at least {self.min_batch_size} points in the (global) batch, got {batch_size}: "
                "raise per_device_train_batch_size"
            )
        return batch_size

    def extra_repr(self) -> str:
        return f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}"
