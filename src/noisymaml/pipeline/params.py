"""The params.yaml schema: every knob that changes a result, validated before a stage works.

The schema is assembled from the registries: `algorithms` from `methods.METHODS` (each
method's `Settings`), the dataset sections from `datasets.DATASETS`. Each stage parses only
the sections it uses, so a typo in one dataset's settings does not stop another dataset's
stages. Errors name the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, create_model, field_validator
from ruamel.yaml import YAML, YAMLError

from noisymaml.datasets import DATASETS
from noisymaml.errors import ParamError
from noisymaml.methods import METHODS
from noisymaml.settings import Section

PARAMS_FILE = Path("params.yaml")
# The top-level keys besides one section per registered dataset.
TOP_LEVEL = ("seed", "device", "datasets", "fetch", "methods", "noisy_methods", "algorithms", "noise",
             "feedback")


class NoiseParams(Section):
    sigma: float = Field(ge=0)
    mean: float = 0.0
    where: Literal["inner", "outer", "both"] = "both"
    outer_scale: float = Field(0.4, ge=0)
    schedule: Literal["constant", "anneal", "step"] = "constant"
    gamma: float = Field(0.55, ge=0)
    decay: float = Field(1.5, ge=1)
    decay_every: int = Field(1000, ge=1)


class FeedbackParams(Section):
    method: str = "noisy_maml"  # the trained method whose model is re-meta-trained with feedback
    tasks: int = Field(ge=1)  # feedback episodes whose support gradients are stored
    iterations: int = Field(ge=1)
    similarity: Literal["cosine", "dot"] = "cosine"
    compare: Literal["support", "meta"] = "support"  # training tasks' support or meta-gradients
    temperature: float = Field(0.1, gt=0)  # weights = softmax(similarity / temperature)
    mode: Literal["batch", "online"] = "batch"  # all feedback tasks at once, or as a stream
    online_every: int = Field(2, ge=1)  # online: re-meta-train after every k arriving tasks

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        problem = method_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def _algorithms_schema() -> type[Section]:
    """`algorithms`: each registered method's settings, under its name (an entry whose settings
    all have defaults may be left out)."""
    fields = {name: (method.Settings, method.Settings() if _all_defaults(method.Settings) else ...)
              for name, method in METHODS.items()}
    return create_model("AlgorithmsParams", __base__=Section, **fields)


def _all_defaults(schema: type[Section]) -> bool:
    return all(not field.is_required() for field in schema.model_fields.values())


AlgorithmsParams = _algorithms_schema()


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

ALGORITHMS = tuple(METHODS)
NOISY = "noisy_"  # method name = algorithm, or noisy_<algorithm> for the same with gradient noise

S = TypeVar("S", bound=Section)


def read_params(path: Path = PARAMS_FILE) -> dict:
    """Read params.yaml as DVC does (YAML 1.2: `off` and `yes` are strings, `1e-3` a number).

    `dvc exp run -S` rewrites the file and drops quotes; a YAML 1.1 reader (PyYAML) would then
    see `rotations: off` as False. A missing or malformed file, or an unknown top-level key,
    is a ParamError naming the file (and the line and column of a YAML error).
    """
    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found (run stages from the project root)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamError(f"{path}: cannot read it ({err})") from None
    except YAMLError as err:
        raise ParamError(f"{path}: not valid YAML{_where(err)}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    unknown = [key for key in data if key not in (*TOP_LEVEL, *DATASETS)]
    if unknown:
        raise ParamError("\n".join(f"{path}: unknown key `{key}` (misspelt?)" for key in unknown))
    return data


def _where(err: YAMLError) -> str:
    """ruamel's several-line report as one clause: at line L, column C: the problem."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or not problem:
        lines = str(err).strip().splitlines()
        return f": {lines[0]}" if lines else ""
    context = getattr(err, "context", None)
    return (f" at line {mark.line + 1}, column {mark.column + 1}: {problem.splitlines()[0]}"
            + (f" ({context.splitlines()[0]})" if context else ""))


def parse_section(data: dict, key: str, schema: type[S], path: Path = PARAMS_FILE) -> S:
    """Validate data[key] against schema; errors name `key.sub.key`, the value and the rule."""
    if key not in data:
        raise ParamError(f"{path}: missing section `{key}`")
    try:
        return schema.model_validate(data[key])
    except ValidationError as err:
        raise ParamError(_describe(err, key, path)) from None


def _describe(err: ValidationError, key: str, path: Path) -> str:
    lines = []
    for problem in err.errors():
        dotted = ".".join([key, *(str(part) for part in problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key `{dotted}` (misspelt?)")
        elif problem["type"] == "missing":
            lines.append(f"{path}: missing key `{dotted}`")
        else:
            lines.append(f"{path}: `{dotted}` = {problem['input']!r}: {message}")
    return "\n".join(lines)


def parse_seed(data: dict, path: Path = PARAMS_FILE) -> int:
    seed = data.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamError(f"{path}: `seed` = {seed!r}: must be a non-negative integer")
    return seed


def parse_device(data: dict, path: Path = PARAMS_FILE) -> str:
    device = data.get("device", "auto")
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ParamError(f"{path}: `device` = {device!r}: allowed are auto, cpu, cuda, cuda:N")
    return device


def parse_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise ParamError(f"unknown dataset {name!r}: allowed are {', '.join(DATASETS)}")
    return name


def parse_dataset(data: dict, name: str, path: Path = PARAMS_FILE) -> Section:
    return parse_section(data, parse_dataset_name(name), DATASETS[name].Settings, path)


def parse_datasets(data: dict, path: Path = PARAMS_FILE) -> list[str]:
    """`datasets`: the datasets `dvc repro` runs, each once, each with its own section."""
    value = data.get("datasets")
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)
            or len(set(value)) != len(value) or not set(value) <= DATASETS.keys()):
        raise ParamError(f"{path}: `datasets` = {value!r}: must be a list of distinct dataset names "
                         f"from {', '.join(DATASETS)}")
    return value


def method_problem(name: str) -> str | None:
    """What is wrong with a method name (None: nothing). A method is an algorithm, optionally
    prefixed `noisy_` (e.g. noisy_mr_maml_w)."""
    if isinstance(name, str) and name.removeprefix(NOISY) in ALGORITHMS:
        return None
    return (f"unknown method {name!r}: allowed are {', '.join(ALGORITHMS)}, each optionally "
            f"prefixed {NOISY} (gradient noise on top)")


def check_method(name: str) -> str:
    problem = method_problem(name)
    if problem:
        raise ParamError(problem)
    return name


def parse_method_lists(data: dict, path: Path = PARAMS_FILE) -> tuple[list[str], list[str]]:
    """(`methods`, `noisy_methods`): the algorithms trained without and with gradient noise."""
    lists = []
    for key in ("methods", "noisy_methods"):
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ParamError(f"{path}: `{key}` = {value!r}: must be a list of algorithm names "
                             f"({', '.join(ALGORITHMS)})")
        unknown = [v for v in value if v not in ALGORITHMS]
        if unknown or len(set(value)) != len(value):
            raise ParamError(f"{path}: `{key}` = {value!r}: each of {', '.join(ALGORITHMS)} "
                             "at most once")
        lists.append(value)
    return lists[0], lists[1]


def trained_methods(data: dict, path: Path = PARAMS_FILE) -> list[str]:
    """Every method name `dvc repro` trains, plain ones first."""
    plain, noisy = parse_method_lists(data, path)
    return [*plain, *(NOISY + name for name in noisy)]
