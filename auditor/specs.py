"""Input specs `[DTYPE:]D0,D1,...`: parsed without torch, so a malformed --input fails before anything loads."""

from __future__ import annotations

import re
from dataclasses import dataclass

from auditor.errors import UsageError

# Accepted spellings -> torch dtype attribute names.
DTYPE_NAMES = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "float64": "float64", "double": "float64", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}
_SPEC = re.compile(r"^(?:(?P<dtype>[a-z0-9]+):)?(?P<dims>\d+(?:,\d+)*)$")


@dataclass(frozen=True)
class InputSpec:
    dtype: str  # canonical torch name: float32, int64, ...
    shape: tuple[int, ...]

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return dims if self.dtype == "float32" else f"{self.dtype}:{dims}"


def parse_spec(text: str) -> InputSpec:
    """`[DTYPE:]D0,D1,...`, e.g. `2,3,224,224` or `long:2,128`. Malformed specs are usage errors."""
    match = _SPEC.match(text.strip().replace(" ", ""))
    if match is None:
        raise UsageError(f"--input {text!r}: expected [DTYPE:]D0,D1,... such as 2,3,224,224 or long:2,128")
    dtype = match.group("dtype") or "float32"
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"--input {text!r}: unknown dtype {dtype!r} (known: {', '.join(sorted(DTYPE_NAMES))})")
    shape = tuple(int(d) for d in match.group("dims").split(","))
    if any(d == 0 for d in shape):
        raise UsageError(f"--input {text!r}: dimensions must be positive")
    return InputSpec(DTYPE_NAMES[dtype], shape)
