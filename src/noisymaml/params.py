"""The params.yaml schema: every knob that changes a result, validated before a stage works.

Each stage parses only the sections it uses, so a typo in one dataset's settings does not
stop another dataset's stages. Errors name the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ruamel.yaml import YAML, YAMLError

from noisymaml.errors import ParamError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    tasks: int = Field(ge=1)
    iterations: int = Field(ge=1)
    similarity: Literal["cosine", "dot"] = "cosine"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        problem = method_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class NoSettings(Section):
    """An algorithm without settings of its own (its inner loop is `<dataset>.maml`)."""


class MrMamlParams(Section):
    """MR-MAML(W), Yin et al. 2020: stochastic feature weights, beta * KL(q || N(0, I))."""

    beta: float = Field(ge=0)
    init_scale: float = Field(gt=0)  # initial posterior std of every stochastic weight
    stochastic_layers: Literal["all"] | Annotated[int, Field(ge=1)] = "all"  # first N feature layers


class MetaAugParams(Section):
    """Meta-augmentation, Rajendran et al. 2020 (classification permutes labels per task)."""

    range: float = Field(gt=0)  # regression: targets shifted by U(-range, range) per task


class AlgorithmsParams(Section):
    """Each base algorithm's own settings; a method's stages depend on its entry only."""

    maml: NoSettings = NoSettings()
    fomaml: NoSettings = NoSettings()
    mr_maml_w: MrMamlParams
    meta_aug: MetaAugParams


class MamlParams(Section):
    inner_lr: float = Field(gt=0)
    inner_steps: int = Field(ge=1)
    first_order: bool = False


class TrainParams(Section):
    iterations: int = Field(ge=1)
    meta_batch: int = Field(ge=1)
    meta_lr: float = Field(gt=0)
    log_every: int = Field(ge=1)
    val_tasks: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    batched_tasks: str | bool = "auto"  # auto: vmap on CUDA, a task loop on CPU
    meta_grad_clip: float | None = Field(None, gt=0)  # clamp meta-gradient entries to +-value
    precision: Literal["float32", "bfloat16"] = "float32"  # bfloat16: forward passes under autocast

    @field_validator("batched_tasks", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("allowed are auto, true, false")


class EvalParams(Section):
    inner_steps: int = Field(ge=0)
    chunk: int = Field(ge=1)


class SinusoidTasks(Section):
    bins: int = Field(ge=1)
    train_bins: int = Field(ge=1)
    amp_min: float = Field(gt=0)
    amp_max: float = Field(gt=0)
    x_range: float = Field(gt=0)
    support: int = Field(ge=1)
    query: int = Field(ge=1)
    label_noise: float = Field(ge=0)
    test_support: int = Field(ge=1)
    test_query: int = Field(ge=1)
    test_episodes: int = Field(ge=1)
    val_episodes: int = Field(ge=1)

    @model_validator(mode="after")
    def _relations(self):
        if self.train_bins > self.bins:
            raise ValueError(f"train_bins ({self.train_bins}) must not exceed bins ({self.bins})")
        if self.amp_min >= self.amp_max:
            raise ValueError(f"amp_min ({self.amp_min}) must be below amp_max ({self.amp_max})")
        return self


class MlpParams(Section):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


class SinusoidParams(Section):
    tasks: SinusoidTasks
    model: MlpParams
    maml: MamlParams
    train: TrainParams
    eval: EvalParams


class FetchParams(Section):
    """How the fetch stages treat the files in data/downloads/<dataset>/."""

    download: bool = True       # omniglot: download the official archives into an empty folder
    allow_pickle: bool = False  # miniimagenet: also read the pickled caches (unpickling runs code)


class SplitParams(Section):
    """Character counts (integers) or fractions of all characters (floats below 1)."""

    train: float = Field(gt=0)
    val: float = Field(gt=0)
    test: float = Field(gt=0)

    @model_validator(mode="after")
    def _one_kind(self):
        values = (self.train, self.val, self.test)
        fractions = [v < 1 for v in values]
        if any(fractions) and not all(fractions):
            raise ValueError("give all three as counts (>= 1) or all as fractions (< 1)")
        if all(fractions) and sum(values) > 1 + 1e-9:
            raise ValueError(f"fractions add up to {sum(values):g}, more than 1")
        if not any(fractions) and any(v != int(v) for v in values):
            raise ValueError("character counts must be whole numbers")
        return self


class ImageTasks(Section):
    """Few-shot classification tasks over a pool of image classes (see tasks.py for the modes)."""

    image_size: int = Field(ge=8)
    mode: Literal["non_exclusive", "intrashuffle", "intershuffle"]
    ways: int = Field(ge=2)
    shots: int = Field(ge=1)
    query_shots: int = Field(ge=1)  # query images per class
    test_episodes: int = Field(ge=1)
    val_episodes: int = Field(ge=1)
    # True where each training group and each val/test task is one fixed class pair (D'Claw objects)
    fixed_pairs: ClassVar[bool] = False


class OmniglotTasks(ImageTasks):
    """Omniglot adds its character split and rotations."""

    rotations: Literal["off", "classes", "augment"] = "off"
    split: SplitParams


class DClawTasks(ImageTasks):
    """D'Claw: every object's neg/pos pair is one fixed 2-way task; `split` picks the objects."""

    split: Literal[1, 2, 3]
    ways: Literal[2] = 2
    fixed_pairs: ClassVar[bool] = True


class ConvParams(Section):
    filters: int = Field(ge=1)
    downsample: Literal["stride", "maxpool"] = "stride"


class ImageParams(Section):
    """An image dataset's settings: its tasks, the Conv-4 and the (meta-)training loop."""

    tasks: ImageTasks
    model: ConvParams
    maml: MamlParams
    train: TrainParams
    eval: EvalParams

    @model_validator(mode="after")
    def _maxpool_needs_room(self):
        if self.model.downsample == "maxpool" and self.tasks.image_size < 16:
            raise ValueError(f"model.downsample = maxpool halves the image four times: "
                             f"tasks.image_size must be at least 16, got {self.tasks.image_size}")
        return self


class OmniglotParams(ImageParams):
    tasks: OmniglotTasks


class DClawParams(ImageParams):
    tasks: DClawTasks


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

DATASETS: dict[str, type[Section]] = {"sinusoid": SinusoidParams, "omniglot": OmniglotParams,
                                      "miniimagenet": ImageParams, "dclaw": DClawParams}
ALGORITHMS = ("maml", "fomaml", "mr_maml_w", "meta_aug")
NOISY = "noisy_"  # method name = algorithm, or noisy_<algorithm> for the same with gradient noise

S = TypeVar("S", bound=Section)


def read_params(path: Path = PARAMS_FILE) -> dict:
    """Read params.yaml as DVC does (YAML 1.2: `off` and `yes` are strings, `1e-3` a number).

    `dvc exp run -S` rewrites the file and drops quotes; a YAML 1.1 reader (PyYAML) would then
    see `rotations: off` as False. A missing or malformed file is a ParamError naming it.
    """
    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found (run stages from the project root)") from None
    except YAMLError as err:
        raise ParamError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


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
    return parse_section(data, parse_dataset_name(name), DATASETS[name], path)


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
