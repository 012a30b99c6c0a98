"""Input specs, parsed without torch, so a malformed or impossible --input fails before anything loads.

    SPEC   := TENSOR | SCALAR | GROUP ("," GROUP)*   one forward argument: a tensor, a plain value, or a tuple of groups
    GROUP  := "(" SPEC ")"                          one item of a tuple
    TENSOR := [DTYPE ":"] D0 ("," D)*               e.g. 2,3,224,224  long:2,128  bfloat16:1,16
    SCALAR := "=" PYTHON-LITERAL                    e.g. =0  =0.5  =True  =None  ='greedy': the value itself, no tensor

So `--input long:16,2 --input "(2,2,32),(2,2,32)"` feeds an LSTM language model's `forward(input, (h0, c0))`,
and `"((1,4),(1,4)),(long:2)"` a tuple whose first item is itself a pair. A scalar starts with `=` because a bare
number is already a tensor (`5` is a float32 vector of 5): `--input long:2,16 --input long:2,16 --input =0` feeds a
seq2seq model's `forward(src, trg, teacher_forcing_ratio)` as `model(src, trg, 0)` does.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from typing import Iterable, Union

from auditor.errors import UsageError
from auditor.limits import MAX_DIGITS, MAX_DIMS, MAX_NESTING, quoted

# Accepted spellings -> torch dtype attribute names.
DTYPE_NAMES = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "float64": "float64", "double": "float64", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}
ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
_TENSOR = re.compile(r"^(?:(?P<dtype>[a-z0-9]+):)?(?P<dims>\d+(?:,\d+)*)$")
_EXAMPLES = "such as 2,3,224,224, long:2,128 or (1,2,32),(1,2,32) for a tuple"


@dataclass(frozen=True)
class InputSpec:
    dtype: str  # canonical torch name: float32, int64, ...
    shape: tuple[int, ...]

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return dims if self.dtype == "float32" else f"{self.dtype}:{dims}"

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * ITEM_BYTES[self.dtype]


@dataclass(frozen=True)
class TupleSpec:
    """A tuple argument, such as an LSTM's `(h0, c0)`."""

    items: tuple[Spec, ...]

    def __str__(self) -> str:
        return ",".join(f"({item})" for item in self.items)

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)


@dataclass(frozen=True)
class ScalarSpec:
    """A plain Python value fed as it is (`teacher_forcing_ratio=0`): an int, float, bool, str or None."""

    value: Union[int, float, bool, str, None]

    def __str__(self) -> str:
        return f"={self.value!r}"

    @property
    def nbytes(self) -> int:
        return 0


Spec = Union[InputSpec, TupleSpec, ScalarSpec]
SCALAR_TYPES = (int, float, bool, str, type(None))
LEFT_AT = "left at"  # the source of an optional argument not passed (left at its default): no guess, not shown as one


@dataclass(frozen=True)
class ArgumentHint:
    """One argument of the repository's own call of a model, as its source reads: the text (`images`, `t`,
    `None`) and, when the source makes the tensor with literal sizes (`torch.randn(4, 3, 64, 64)`), its spec in
    --input's grammar."""

    text: str
    spec: str | None = None  # a plain value's is a scalar spec: `=0`, `=0.5`, `='greedy'`


@dataclass(frozen=True)
class CallHint:
    """A call of the model in the repository (`model(x, t)` at train.py:41), read statically: the guesses take
    its specs first, read its argument names as they read the forward's, and feed the optional arguments it
    passes. Plain data: it crosses from the process that reads the repository to the one that builds."""

    site: str
    args: tuple[ArgumentHint, ...] = ()
    kwargs: tuple[tuple[str, ArgumentHint], ...] = ()


def parse_spec(text: str, limit: int | None = None) -> Spec:
    """One --input. Malformed specs, and inputs larger than `limit` bytes (default: this machine's memory),
    are usage errors."""
    spec = _parse(_compact(text), text, 0)
    limit = memory_bytes() if limit is None else limit
    if limit and spec.nbytes > limit:
        raise UsageError(f"--input {quoted(text)}: input too large: {_size(spec.nbytes)}, more than this machine's memory "
                         f"({_size(limit)}); pass a smaller shape")
    return spec


def _compact(text: str) -> str:
    """A spec without its spaces, but for a plain value's (a string keeps them: `='greedy mode'`)."""
    compact = text.strip()
    return compact if compact.startswith("=") else compact.replace(" ", "")


def _parse(text: str, original: str, depth: int) -> Spec:
    if text.startswith("="):
        return _scalar(text[1:], original)
    if text.startswith("("):
        if depth >= MAX_NESTING:
            raise UsageError(f"--input {quoted(original)}: tuples nested more than {MAX_NESTING} levels deep")
        return TupleSpec(tuple(_parse(group, original, depth + 1) for group in _groups(text, original)))
    match = _TENSOR.match(text)
    if match is None:
        raise UsageError(f"--input {quoted(original)}: expected [DTYPE:]D0,D1,... {_EXAMPLES}")
    dtype = match.group("dtype") or "float32"
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"--input {quoted(original)}: unknown dtype {quoted(dtype)} (known: {', '.join(sorted(DTYPE_NAMES))})")
    dims = match.group("dims").split(",")
    if len(dims) > MAX_DIMS:
        raise UsageError(f"--input {quoted(original)}: {len(dims)} dimensions, more than {MAX_DIMS}")
    if any(len(d) > MAX_DIGITS for d in dims):
        raise UsageError(f"--input {quoted(original)}: a dimension with more than {MAX_DIGITS} digits; no input is that large")
    shape = tuple(int(d) for d in dims)
    if any(d == 0 for d in shape):
        raise UsageError(f"--input {quoted(original)}: dimensions must be positive")
    return InputSpec(DTYPE_NAMES[dtype], shape)


def _scalar(text: str, original: str) -> ScalarSpec:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    else:
        if isinstance(value, SCALAR_TYPES):
            return ScalarSpec(value)
    raise UsageError(f"--input {quoted(original)}: a plain value is written =LITERAL, such as =0, =0.5, =True, =None or ='greedy'")


def _groups(text: str, original: str) -> list[str]:
    """`(a),(b,(c))` -> ["a", "b,(c)"]: the contents of each top-level parenthesized group."""
    groups: list[str] = []
    depth, start, closed = 0, 0, False  # closed: a group just ended, so "," (or the end) must follow
    for index, char in enumerate(text):
        if depth == 0:
            if closed and char == ",":
                closed = False
                continue
            if closed or char != "(":
                break
            depth, start = 1, index + 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                groups.append(text[start:index])
                closed = True
    else:
        if closed and all(groups):
            return groups
    raise UsageError(f"--input {quoted(original)}: unbalanced or misplaced parentheses; a tuple is written (SPEC),(SPEC),... {_EXAMPLES}")


def readable(spec: Spec | None) -> str:
    """How people read a spec: `long 2x32`, `float32 2x3x224x224`, `(float32 1x2x32, float32 1x2x32)`."""
    if spec is None:
        return "None"
    if isinstance(spec, TupleSpec):
        return "(" + ", ".join(readable(item) for item in spec.items) + ")"
    if isinstance(spec, ScalarSpec):
        return str(spec)
    dtype = "long" if spec.dtype == "int64" else spec.dtype
    return f"{dtype} {'x'.join(str(d) for d in spec.shape)}"


def readable_text(text: str) -> str:
    """`readable` of a spec written in --input's grammar; anything else ("None") as it is."""
    try:
        return readable(_parse(_compact(text), text, 0))
    except UsageError:
        return text


def argument_text(name: str, spec: str) -> str:
    """An argument and a spec written in --input's grammar, as people read them: `x long 2x32`, `ratio=0`."""
    shown = readable_text(spec)
    return f"{name}{shown}" if shown.startswith("=") else f"{name} {shown}"


def inputs_text(arguments: Iterable[tuple[str, str, str]]) -> str:
    """Guessed inputs as people read them, each (name, spec, source): `idx long 2x32 from Embedding(1000, 64); t
    long 2 as a timestep`. An optional argument left at its default is no guess and is not shown."""
    return "; ".join(f"{argument_text(name, spec)} {source}" for name, spec, source in arguments if not source.startswith(LEFT_AT))


def memory_bytes() -> int:
    """Physical memory of this machine (0 when unknown): no input can be larger."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} EiB"
