"""Reduced precision at a float32 op's cost: autocast decides which ops get bfloat16/float16 operands, and the
heavy ones among them (convolutions, matrix products, attention, and their backward) compute in float32 from
those same rounded values and round their result to the reduced format.

A native reduced-precision kernel does the same (it multiplies the rounded operands, accumulates in float32 and
rounds the result), so every later op sees the values autocast would give it, but a CPU without bfloat16
instructions (no AVX512-BF16 or AMX) has no such kernel: PyTorch emulates one at 10-30x a float32 kernel's cost
(a Conv1d ResNet's forward+backward took 84 s in bfloat16 against 3.6 s in float32), and even with them CPU
attention is 3x slower in bfloat16. The probes use this on every CPU, so that a model's mixed-precision numbers
and findings do not depend on the machine's instruction set; on CUDA, autocast's own kernels are fast and used.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

_aten = torch.ops.aten
_FLASH = _aten._scaled_dot_product_flash_attention_for_cpu
# Ops whose reduced-precision CPU kernels are the slow ones (the elementwise ops and norms around them are
# vectorized in bfloat16 and cost what they cost in float32).
HEAVY = frozenset({
    _aten.convolution, _aten.convolution_backward,
    _aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.addbmm,
    _FLASH, _aten._scaled_dot_product_flash_attention_for_cpu_backward,
})
# Outputs a native kernel returns in float32 whatever its operands (attention's log-sum-exp, kept for backward).
_FLOAT32_OUTPUTS = {_FLASH: {1}}
_REDUCED = (torch.bfloat16, torch.float16)


class RoundedKernels(TorchDispatchMode):
    """Runs the `HEAVY` ops that receive bfloat16 or float16 operands in float32 and rounds their results back
    (see the module's docstring). Active around forward and backward: a backward convolution is as slow."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # torch would wrap `__torch_dispatch__` in dynamo.disable, importing torch._dynamo (1.6 s)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        reduced = _reduced_dtype(args, kwargs) if func.overloadpacket in HEAVY else None
        if reduced is None:
            return func(*args, **kwargs)
        widened = tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == reduced else t, (args, kwargs))
        result = func(*widened[0], **widened[1])
        kept = _FLOAT32_OUTPUTS.get(func.overloadpacket, set())
        if isinstance(result, (tuple, list)):
            return type(result)(_round(r, reduced) if i not in kept else r for i, r in enumerate(result))
        return _round(result, reduced)


def _reduced_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.dtype | None:
    """The one reduced format among the floating-point operands (float32 ones may come with it: attention's
    log-sum-exp), or None: nothing reduced, or two reduced formats, which the native op handles (or refuses)."""
    found = {t.dtype for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dtype in _REDUCED}
    return found.pop() if len(found) == 1 else None


def _round(value: Any, dtype: torch.dtype) -> Any:
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value


@contextlib.contextmanager
def rounded_kernels(device_type: str) -> Iterator[None]:
    """`RoundedKernels` on CPU; nothing elsewhere (CUDA's reduced-precision kernels are native)."""
    if device_type != "cpu":
        yield
        return
    with RoundedKernels():
        yield
