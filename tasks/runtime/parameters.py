"""The rules a run's parameters follow, whichever entry point gave them.

A flow is started by its CLI (`python -m flows.benchmark ...`) or by Prefect
(`prefect deployment run --param ...`, the UI, a schedule); Prefect checks only the
types of the flow's signature. So each flow checks its parameters here before anything
else, and each CLI checks the same before it starts anything: both entry points refuse
the same values with the same message, naming the parameter.

- A list of names (`categories`, `models`) is left out, or is `["all"]`, to mean every
  one; otherwise it names each one once. An empty list, a blank item (an empty
  `--categories ''`, a stray comma, an unset shell variable in a cron line) or a repeat
  is refused: none of them may turn into "everything" or "twice".
- A number is finite and within its range (a NaN timeout would never run out).
- A file or folder parameter is a non-empty string.

Example:
    >>> BenchmarkParameters.check(categories=["demo_grid", "demo_grid"])
    Traceback (most recent call last):
    ParameterError: categories: 'demo_grid' is named twice; name each one once
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from tasks.runtime.profiles import NUMBER_ERRORS, allowed_range

ALL = "all"
MAX_LOCK_TIMEOUT_S = 86_400


class ParameterError(ValueError):
    """A run parameter breaks its rule; the message names the parameter and the rule."""


def check_names(names: list[str] | None, parameter: str, what: str) -> list[str] | None:
    """`names` as given when it names each `what` once, or is None or `["all"]` (every
    one); else `ParameterError` naming `parameter` and the problem."""
    if names is None:
        return None
    every = f"leave {parameter} out, or say '{ALL}', for every {what}"
    if not names:
        raise ParameterError(f"{parameter}: the list is empty; {every}")
    for i, name in enumerate(names, start=1):
        if not name.strip():
            raise ParameterError(
                f"{parameter}: item {i} of {names!r} is blank (an empty value, a stray comma "
                f"or an unset shell variable?); {every}"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ParameterError(f"{parameter}: {name!r} is named twice; name each one once")
        seen.add(name)
    if ALL in (n.lower() for n in names) and len(names) > 1:
        raise ParameterError(
            f"{parameter}: '{ALL}' means every {what}; it cannot be combined with other names"
        )
    return list(names)


class RunParameters(BaseModel):
    """The parameters every flow that records a run takes (`validate-dataset`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: Literal["demo", "mvtec", "folder"] = "demo"
    data_root: StrictStr | None = Field(None, min_length=1)
    categories: list[StrictStr] | None = None
    db: StrictStr = Field("results/benchmark.duckdb", min_length=1)
    db_lock_timeout_s: float = Field(30.0, ge=0, le=MAX_LOCK_TIMEOUT_S)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str] | None) -> list[str] | None:
        return check_names(value, "categories", "category")

    @classmethod
    def check(cls, **values: Any) -> RunParameters:
        """The parameters, or `ParameterError` listing every one that breaks its rule."""
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ParameterError(describe(err, cls)) from None


class BenchmarkParameters(RunParameters):
    """The `anomaly-benchmark` flow's parameters (see flows/benchmark.py)."""

    models: list[StrictStr] | None = None
    profile: StrictStr = "quick"
    overrides: dict[str, Any] | None = None
    output_dir: StrictStr = Field("runs", min_length=1)
    reports_dir: StrictStr = Field("reports", min_length=1)
    cluster: StrictStr = Field("none", min_length=1)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        return check_names(value, "models", "model")

    def chosen(self, parameter: str, every: tuple[str, ...]) -> list[str] | None:
        """`parameter`'s names, with `all` (or nothing given) as `every` when that is
        known; None means every one found (a folder's categories)."""
        names = getattr(self, parameter)
        if names is None or [n.lower() for n in names] == [ALL]:
            return list(every) if every else None
        return list(names)


def describe(err: ValidationError, model: type[BaseModel]) -> str:
    """Each broken rule as 'parameter: message', a number's range included."""
    problems = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"]) or "parameters"
        message = e["msg"].removeprefix("Value error, ")
        if message.startswith(f"{where}: "):  # the rule named the parameter itself
            message = message.removeprefix(f"{where}: ")
        bounds = allowed_range(model, e["loc"])
        if bounds and e["type"] in NUMBER_ERRORS:
            message += f" (allowed: {bounds})"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def split_names(text: str | None) -> list[str] | None:
    """A CLI's comma list: None when the flag was not given, else every item, blank ones
    kept ('' -> [''], 'a,,b' -> ['a', '', 'b']) so that the rules above refuse them."""
    return None if text is None else [part.strip() for part in text.split(",")]


def parse_overrides(text: str | None, flag: str = "--overrides") -> dict | None:
    """The JSON object given to `flag`, or `ParameterError` naming the flag and where
    the JSON breaks."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParameterError(
            f"{flag}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno} "
            f"(character {err.pos}) of {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise ParameterError(
            f'{flag}: expected a JSON object such as \'{{"patchcore": {{"image_size": 128}}}}\', '
            f"got {type(value).__name__} {text!r}"
        )
    return value
