"""What an expression of the user's code evaluates to, as far as reading (never running) it can tell.

A value read from source is a plain Python value (numbers, strings, tuples, lists, dicts: literals, the
repository's constants, argparse defaults, config files read by a literal path) whose leaves may also be:

- `Ref`: a class or function of the repository (by file), or an allowed library name (`torch.nn.ReLU`);
- `Call`: a call of a `Ref` with values as arguments (`GPTConfig(n_layer=2)`, `Net()` passed as a backbone),
  made only later, in the child process that builds the model;
- `Namespace`: an argparse result, its options' defaults as attributes;
- `Unknown`: what the source alone cannot tell (data-dependent sizes, `len(dataset.classes)`), with its text.

Everything here is picklable: a plan crosses from the parent (which reads) to the child (which builds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auditor.specs import DTYPE_NAMES, InputSpec

# Library names a plan may use as values or call: torch.nn's classes and functions (an activation passed as
# `act_layer=nn.GELU`), dtypes, functools.partial (timm-style `norm_layer=partial(nn.LayerNorm, eps=1e-6)`).
ALLOWED_LIBRARY_PREFIXES = ("torch.nn.", "functools.partial", "math.")
# Parameter names that take a config object (`GPT(config)`, `Net(args)`, `Model(hparams)`).
CONFIG_SUFFIXES = ("Config", "Args", "Params", "Cfg", "Arguments", "Options", "Hparams")
CONFIG_PARAMETERS = ("config", "cfg", "args", "model_args", "params", "hparams", "model_config", "conf", "opt", "opts", "hp", "hps", "configs")


@dataclass(frozen=True)
class Ref:
    """A class or function: defined in a repository file (`path`, absolute) or a library module (`module`)."""

    name: str
    path: str | None = None
    module: str | None = None

    def __str__(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@dataclass(frozen=True)
class Call:
    """`func(*args, **kwargs)`, made in the child that builds the model; `site` is where the source makes it."""

    func: Ref
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    site: str | None = None  # "train.py:41"

    def keywords(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def __str__(self) -> str:
        parts = [describe(a) for a in self.args] + [f"{k}={describe(v)}" for k, v in self.kwargs]
        return f"{self.func.name}({', '.join(parts)})"


@dataclass
class Namespace:
    """An argparse result (`args = parser.parse_args()`): each option's default under its `dest`."""

    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DefaultConfig:
    """The config object a parameter declares (its annotation or default's class, the module's one `*Config`
    dataclass, a `get_default_config()`), built with its own defaults in the child."""

    parameter: str

    def __str__(self) -> str:
        return f"<default {self.parameter}>"


@dataclass(frozen=True)
class Unknown:
    """A value reading cannot tell, with the source text it came from."""

    text: str

    def __str__(self) -> str:
        return self.text


def is_known(value: Any, depth: int = 0) -> bool:
    """No `Unknown` anywhere inside."""
    if depth > 20:
        return False
    if isinstance(value, Unknown):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(is_known(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(is_known(v, depth + 1) for v in value.values())
    if isinstance(value, Call):
        return all(is_known(v, depth + 1) for v in value.args) and all(is_known(v, depth + 1) for _, v in value.kwargs)
    if isinstance(value, Namespace):
        return True  # unknown options are only a problem where they are read
    return True


def describe(value: Any, limit: int = 40) -> str:
    """Short source-like text of a value, for messages ("built as in train.py:41: num_classes=10")."""
    if isinstance(value, (Ref, Call, Unknown, DefaultConfig)):
        text = str(value)
    elif isinstance(value, Namespace):
        text = "Namespace(...)"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- tensors the source makes (for input inference: `model(torch.randn(4, 3, 64, 64))`) ---------------------
_FLOAT_MAKERS = ("torch.randn", "torch.rand", "torch.zeros", "torch.ones", "torch.empty", "torch.FloatTensor")
_INT_MAKERS = ("torch.randint",)


def tensor_spec(value: Any) -> str | None:
    """An input spec (`2,3,32,32`, `long:4,16`) for a tensor made by a plain torch factory with literal sizes,
    or None. `torch.randint(0, 1000, (4, 16))` -> `long:4,16`."""
    if not isinstance(value, Call) or value.func.module is None:
        return None
    name = f"{value.func.module}.{value.func.name}"
    sizes: Any
    if name in _FLOAT_MAKERS:
        sizes = value.args[0] if len(value.args) == 1 and isinstance(value.args[0], (tuple, list)) else value.args
        dtype = "float32"
    elif name in _INT_MAKERS and len(value.args) >= 2:
        sizes = value.args[-1] if isinstance(value.args[-1], (tuple, list)) else value.keywords().get("size")
        dtype = "int64"
    else:
        return None
    explicit = value.keywords().get("dtype")
    if isinstance(explicit, Ref) and explicit.module == "torch" and explicit.name in DTYPE_NAMES:
        dtype = DTYPE_NAMES[explicit.name]
    if not isinstance(sizes, (tuple, list)) or not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        return None
    return str(InputSpec(dtype, tuple(sizes)))
