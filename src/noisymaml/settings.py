"""The base of every params.yaml section model (pydantic), shared by the registries' entries.

A method (`methods/`) or a dataset (`datasets/`) declares its own settings as a `Section`
subclass; `pipeline.params` assembles them into the params.yaml schema. Unknown keys are
errors (they are usually typos), values are checked strictly and never silently coerced: a
number must be a number (`"0.1"` and `true` are refused), an integer an integer (an int is a
valid float).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors (they are usually typos), types are strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class NoSettings(Section):
    """A registry entry without settings of its own."""
