"""The init record: which init call or in-place write last set each part of each parameter, taken while the tool
builds a model without weights (see `auditor.loading.meta`).

A `TorchFunctionMode` sees every call, on meta tensors too: `nn.init.*` functions (whole, with their arguments:
torch dispatches some as one call, the others are recognised by their frame while their in-place steps run),
in-place methods (`normal_`, `uniform_`, `fill_`, `zero_`, `copy_`, `mul_`, `x[i] = v`), and `.data`
assignments. Writes are followed to their parameter through the storage they share, so `p.data.normal_()`,
`p[0].fill_(0)` and `p.chunk(4)[i]` all count; a write that covers whole rows replaces those rows' distribution.
Real tensors copied in (`load_state_dict`, `w.copy_(torch.randn(...) * s)`) are measured as they arrive. What
cannot be followed (values computed from other weights on meta, a write through a strided view) makes the
parameter unknown, with the reason and the line: `init_of` returns None there, never a guess. Parameters are
moved to meta as they are registered, so `__init__` code that reads buffers or freshly made tensors still runs;
what was computed before registration (`nn.Parameter(torch.zeros(n))`) is measured then. Writes into meta
parameters are recorded, not run, and `.to(device)` leaves them on meta.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from dataclasses import replace
from typing import Any, Callable, Container, Iterator, Sequence

import torch
import torch.nn as nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from auditor.graph.inits import Init, Measured
from auditor.loading.distributions import ELEMENTWISE, Dist, Summary, from_init_call, unknown
from auditor.locations import first_user_site

Piece = tuple[int, int, Dist]  # rows [start, end) and how they were last written

_EMPTY_FACTORIES = frozenset({"empty", "empty_like", "new_empty", "empty_strided"})
# Factories of a tensor of a given shape, whose values `_drawn` knows: one too large to measure is made on meta
FACTORIES = _EMPTY_FACTORIES | frozenset({
    "zeros", "ones", "full", "rand", "randn", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
    "new_zeros", "new_ones", "new_full",
})
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "detach_", "rename_", "retain_grad"})
_MEASURABLE = 1 << 24  # entries of a real tensor copied into a parameter that are measured on the spot, at most
_DEVICE_MOVES = frozenset({"to", "cpu", "cuda"})
_CONVERSIONS = frozenset({"to", "half", "float", "double", "bfloat16", "type", "cpu", "cuda", "clone", "contiguous", "detach"})
_PUBLIC_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
                 "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_INIT_FUNCTIONS = {getattr(torch.nn.init, n).__code__: n for n in _PUBLIC_INITS if hasattr(getattr(torch.nn.init, n, None), "__code__")}


class Recorded(Init):
    """A parameter's init as recorded: pieces of rows, each with the distribution it was last drawn from."""

    def __init__(self, pieces: list[Piece], row_size: int) -> None:
        self.pieces = pieces
        self.row_size = row_size
        self.how = "; ".join(dict.fromkeys(d.describe() for _, _, d in pieces))

    def std_mean(self) -> tuple[float, float] | None:
        total = sum(end - start for start, end, _ in self.pieces)
        mean = square = 0.0
        for start, end, dist in self.pieces:
            moments = dist.std_mean()
            if moments is None:
                return None
            share = (end - start) / total
            mean += share * moments[1]
            square += share * (moments[0] ** 2 + moments[1] ** 2)
        return math.sqrt(max(square - mean**2, 0.0)), mean

    def constant(self, tolerance: float, skip_row: int | None = None) -> float | None:
        rows = self.pieces[-1][1]
        skip = None if skip_row is None or rows < 2 else skip_row % rows
        values = [d.constant_value(tolerance) for start, end, d in self.pieces if skip is None or (start, end) != (skip, skip + 1)]
        if not values or any(v is None for v in values):
            return None
        first = values[0]
        return first if all(abs(v - first) <= tolerance * abs(first) for v in values) else None

    def identical_units(self, tolerance: float, unit_dim: int = 0) -> bool | None:
        if self.constant(tolerance) is not None:
            return True
        answers = [d.rows_identical(tolerance, unit_dim) for _, _, d in self.pieces]
        if len(answers) == 1 or None in answers:
            return answers[0] if len(answers) == 1 else None
        return False  # pieces written by different calls, not all one constant: units differ

    def block_deviations(self, blocks: int) -> list[float | None] | None:
        rows = self.pieces[-1][1]
        if rows % blocks:
            return None
        size = rows // blocks
        deviations: list[float | None] = []
        for first in range(0, rows, size):
            piece = next((d for start, end, d in self.pieces if start <= first and first + size <= end), None)
            if piece is None:
                return None  # a block written piecewise: not something to judge from the record
            deviation = piece.orthogonal_deviation(size, self.row_size, whole=size == piece.shape[0])
            if deviation is None and piece.constant_value(0.0) != 0:
                return None
            deviations.append(deviation)
        return deviations


class InitRecord:
    """Every parameter of one built model -> what its init is known to be (or why it is not)."""

    def __init__(self) -> None:
        self._inits: dict[int, tuple[torch.Tensor, Init | None]] = {}
        self.unknown: dict[str, str] = {}  # qualified name -> why its init is not known
        self.named: dict[str, Init | None] = {}  # qualified name -> its init (a model built again with weights has the same)
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(buffer on meta) -> (it, its values)

    def add(self, name: str, param: torch.Tensor, init: Init | None, why: str = "") -> None:
        self._inits[id(param)] = (param, init)
        self.named[name] = init
        if init is None:
            self.unknown[name] = why

    def init_of(self, param: Any) -> Init | None:
        entry = self._inits.get(id(param))
        return entry[1] if entry is not None and entry[0] is param else None

    def add_buffer(self, buffer: torch.Tensor, values: torch.Tensor) -> None:
        self._buffers[id(buffer)] = (buffer, values)

    def buffer_values(self, buffer: Any) -> torch.Tensor | None:
        """The values a buffer on meta had when the build ended (the constants `__init__` computed: masks,
        frequencies, running statistics), which `--fix` writes with a model it fixes without weights."""
        entry = self._buffers.get(id(buffer))
        return entry[1] if entry is not None and entry[0] is buffer else None


class _Tracked:
    """One parameter while the model is built: its rows, and the pieces of them each write left."""

    def __init__(self, param: torch.Tensor, first: Dist) -> None:
        self.param = param  # kept alive while building, so its storage (the key of writes) is not reused
        contiguous = param.dim() > 0 and param.numel() > 0 and param.is_contiguous()
        self.rows = int(param.shape[0]) if contiguous else 1
        self.row_size = max(1, param.numel() // self.rows)
        self.offset = param.storage_offset()
        self.pieces: list[Piece] = [(0, self.rows, first)]

    def region(self, view: torch.Tensor) -> tuple[int, int] | None:
        """The rows a view of this parameter covers; None when it is not whole rows."""
        offset = view.storage_offset() - self.offset
        if view.numel() == self.rows * self.row_size and offset == 0:
            return 0, self.rows  # the whole tensor, in any layout (`p.t()`, `p.view_as(q)`)
        if not view.is_contiguous() or offset % self.row_size or view.numel() % self.row_size:
            return None
        start = offset // self.row_size
        return start, start + view.numel() // self.row_size

    def write(self, region: tuple[int, int], dist: Dist) -> None:
        self.apply(region, lambda _: dist)

    def apply(self, region: tuple[int, int], change: Callable[[Dist], Dist]) -> None:
        start, end = region
        pieces: list[Piece] = []
        for a, b, dist in self.pieces:
            if b <= start or a >= end:
                pieces.append((a, b, dist))
                continue
            if a < start:
                pieces.append((a, start, dist))
            pieces.append((max(a, start), min(b, end), change(dist)))
            if b > end:
                pieces.append((end, b, dist))
        self.pieces = _merged(sorted(pieces, key=lambda p: p[0]))

    def within(self, region: tuple[int, int]) -> list[Piece]:
        start, end = region
        return [(max(a, start) - start, min(b, end) - start, d) for a, b, d in self.pieces if a < end and b > start]

    def forget(self, how: str) -> None:
        self.pieces = [(0, self.rows, unknown(how))]


class InitRecorder(TorchFunctionMode):
    """Records parameter registrations and every write into them while a model is built."""

    def __init__(self) -> None:
        super().__init__()
        self._tracked: dict[int, _Tracked] = {}  # storage key -> tracked parameter
        self._by_param: dict[int, _Tracked] = {}  # id(parameter) -> the same
        self._buffers: dict[int, torch.Tensor] = {}  # buffers registered while recording, by id
        self._uninitialized: set[int] = set()  # storages made by torch.empty and not written since
        self._converted: dict[int, _Tracked] = {}  # storages of `p.to(dtype)` and the like, by storage key
        self._init_frame: Any = None  # the nn.init call recorded last, whose own steps are not recorded again

    @contextlib.contextmanager
    def recording(self) -> Iterator[InitRecorder]:
        """Move parameters to meta as modules register them, note the buffers they register, watch every call."""
        from torch.nn.modules.module import register_module_buffer_registration_hook as on_buffer
        from torch.nn.modules.module import register_module_parameter_registration_hook as on_parameter

        def parameter(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
            if id(param) in self._by_param or is_lazy(param):  # a lazy module's shapeless parameter stays as is:
                return None  # the model is then not one built here, and is built with weights (it needs a forward)
            return self._on_meta(param)

        def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
            if tensor is not None:
                self._buffers[id(tensor)] = tensor

        with on_parameter(parameter), on_buffer(buffer), self:
            yield self

    def built_here(self, model: nn.Module) -> bool:
        """Whether every parameter and buffer of `model` was made while recording: registered, or deep-copied
        from one that was (`nn.TransformerEncoder` copies its layer). Nothing made before (an instance built at
        import, a module reused from elsewhere) may be moved to meta."""
        return all(id(p) in self._by_param or _key(p) in self._converted for p in model.parameters()) and all(
            self._buffers.get(id(b)) is b for b in model.buffers()
        )

    def record(self, model: nn.Module) -> InitRecord:
        """Move the buffers to meta too (they stayed real while `__init__` ran; the record keeps their values) and
        name each parameter's init."""
        record = InitRecord()
        for module in model.modules():
            for name, tensor in list(module._buffers.items()):
                if tensor is not None and not tensor.is_meta:
                    module._buffers[name] = tensor.to("meta")
                    record.add_buffer(module._buffers[name], tensor)
        for param in model.parameters():
            if id(param) not in self._by_param:  # a deep copy: it has the init of what it copies
                self._track(param, unknown("")).pieces = list(self._converted[_key(param)].pieces)
        for name, param in model.named_parameters():
            tracked = self._by_param[id(param)]
            unknown_pieces = [d for _, _, d in tracked.pieces if not d.known]
            if unknown_pieces:
                record.add(name, param, None, unknown_pieces[0].describe())
            else:
                record.add(name, param, Recorded(tracked.pieces, tracked.row_size))
        return record

    def _on_meta(self, param: nn.Parameter) -> nn.Parameter:
        """The parameter on meta, tracked from what its values were (measured now) or that it had none."""
        made = self._tracked.get(_key(param))
        if made is not None:  # its tensor was made on meta by a factory (too large to be real): what it drew
            tracked = self._track(param, unknown(""))
            if made.rows == tracked.rows:
                tracked.pieces = list(made.pieces)
            else:
                tracked.forget("a reshaped view of a tensor made while the model was built")
            return param
        copied = self._converted.get(_key(param))
        if copied is not None:
            first = unknown("")  # replaced by the pieces of the parameter it copies, below
        elif _key(param) in self._uninitialized:
            first = Dist("uninitialized", how="never initialized (created empty and not written)")
        elif param.is_meta:
            first = unknown("computed from other weights while the model was built without them")
        else:
            first = Dist("values", summary=_summarize(param), how="values computed when it was created")
        moved = param if param.is_meta else _meta_copy(param)
        tracked = self._track(moved, first)
        if copied is not None and copied.rows == tracked.rows:
            tracked.pieces = list(copied.pieces)
        elif copied is not None:
            tracked.forget("a copy of another parameter, reshaped")
        return moved

    def _track(self, param: torch.Tensor, first: Dist) -> _Tracked:
        tracked = _Tracked(param, first)
        self._tracked[_key(param)] = tracked
        self._by_param[id(param)] = tracked
        return tracked

    # --- watching -----------------------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in FACTORIES:
            large = self._large_on_meta(func, name, args, kwargs)
            if large is not None:
                return large
        if name in _PUBLIC_INITS and inspect.isfunction(func):  # an nn.init function torch dispatches whole (or a
            # library's wrapper of one put in its place, as transformers does while it initializes)
            arguments = _bound(func, args, kwargs)
            tensor = arguments.get("tensor")
            if isinstance(tensor, torch.Tensor) and _key(tensor) in self._tracked:
                self._init_call(name, arguments, tensor)
                return tensor  # a parameter on meta: nothing to compute
            return func(*args, **kwargs)
        target = _written(func, name, args, kwargs)
        tracked = self._tracked.get(_key(target)) if target is not None else None
        if tracked is not None:
            self._on_write(tracked, target, name, args, kwargs)  # first: `p.data = x` changes the storage
            if name != "__set__":
                # A write into a parameter on meta computes nothing: skipping it also spares the first random
                # draw on meta, which imports torch._dynamo (2 s) to find its meta function.
                return None if name == "__setitem__" else target
        if name in _DEVICE_MOVES and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            result = _kept_on_meta(args[0], name, args, kwargs)  # `model.to("cpu")` at the end of a factory
        else:
            result = func(*args, **kwargs)
        if name == "__deepcopy__" and args and self._buffers.get(id(args[0])) is args[0]:
            self._buffers[id(result)] = result  # a copied buffer is one made here too
        elif getattr(func, "__self__", None) is torch.Tensor.is_meta and args:
            self._in_init_function(args[0])  # some nn.init functions ask this, and skip meta tensors
        elif isinstance(result, torch.Tensor):
            self._note_made(result, name, args)
        if target is not None:
            self._uninitialized.discard(_key(target))
        return result

    def _large_on_meta(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """A tensor too large to measure (a 40 GB `Linear(100000, 100000)` weight) is made on meta from the
        start: never real, not even for a moment. It is tracked with what its factory draws. None: made as
        usual (small tensors stay real, so `__init__` code that reads them, as timm's `linspace(...).item()`
        does, still runs; a whole build under `torch.device("meta")` would break it)."""
        shaped = factory_on_meta(func, args, kwargs)
        if shaped is None or shaped.numel() <= _MEASURABLE:
            return None
        self._track(shaped, _drawn(name, args, kwargs, f"torch.{name} at {_text(_where())}"))
        return shaped

    def _note_made(self, result: torch.Tensor, name: str, args: tuple[Any, ...]) -> None:
        """Remember tensors made empty (never measured as values) and copies or conversions of a parameter."""
        if self._uninitialized or self._converted:
            self._forget_reused(result, name, args)
        if name in _EMPTY_FACTORIES:
            self._uninitialized.add(_key(result))
        elif name in _CONVERSIONS and args:
            tracked = self._tracked.get(_key(args[0]))
            if tracked is not None and args[0].numel() == tracked.rows * tracked.row_size:
                self._converted[_key(result)] = tracked

    def _forget_reused(self, result: torch.Tensor, name: str, args: tuple[Any, ...]) -> None:
        """A new tensor whose storage key was noted for a tensor since freed (the address is reused): the note
        no longer applies. A view of a noted tensor shares its key and keeps the note."""
        key = _key(result)
        if key in self._uninitialized or key in self._converted:
            if name not in _EMPTY_FACTORIES and not any(isinstance(a, torch.Tensor) and _key(a) == key for a in args):
                self._uninitialized.discard(key)
                self._converted.pop(key, None)

    def _in_init_function(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` is being touched by a torch.nn.init function torch does not dispatch whole
        (orthogonal_, trunc_normal_, xavier_...); that call is recorded once, from its frame, its steps not."""
        if _key(tensor) not in self._tracked:
            return False
        frame = _frame_of(_INIT_FUNCTIONS)
        if frame is None:
            return False
        if frame is not self._init_frame:
            self._init_frame = frame
            argument = frame.f_locals.get("tensor")
            self._init_call(frame.f_code.co_name, dict(frame.f_locals), argument if isinstance(argument, torch.Tensor) else tensor)
        return True

    def _on_write(self, tracked: _Tracked, target: torch.Tensor, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._in_init_function(target):
            return
        where = _where()
        how = f"Tensor.{name} at {_text(where)}"
        if name == "__set__":
            self._replaced(tracked, args[1], how)
            return
        view = target[args[1]] if name == "__setitem__" else target
        region = tracked.region(view)
        if region is None:
            tracked.forget(f"partly written by {how} (not whole rows)")
            return
        tracked.apply(region, lambda dist: _written_by(_after(dist, name, args, kwargs, how, view, self), where, name, dist))

    def _init_call(self, name: str, arguments: dict[str, Any], tensor: torch.Tensor) -> None:
        tracked = self._tracked.get(_key(tensor))
        if tracked is None:
            return
        shown = ", ".join(f"{k}={_short(v)}" for k, v in arguments.items() if k not in ("tensor", "generator") and _is_simple(v))
        where = _where()
        how = f"nn.init.{name}({shown}) at {_text(where)}"
        region = tracked.region(tensor)
        if region is None:
            tracked.forget(f"partly written by {how} (not whole rows)")
            return
        tracked.write(region, _written_by(from_init_call(name, arguments, tuple(tensor.shape), how), where, name))

    def _replaced(self, tracked: _Tracked, value: Any, how: str) -> None:
        """`p.data = value`: the same values converted (`model.half()`), another parameter's, or unknown."""
        source = self._converted.get(_key(value)) or self._tracked.get(_key(value))
        self._tracked = {k: t for k, t in self._tracked.items() if t is not tracked}  # its old storage may be freed
        self._tracked[_key(value)] = tracked
        if source is tracked:
            return
        if source is not None and source.rows == tracked.rows:
            tracked.pieces = list(source.pieces)
        else:
            tracked.forget(f"replaced through .data ({how})")

    def copied(self, source_tensor: Any, view: torch.Tensor, how: str) -> Dist | None:
        """What a copy of `source_tensor` into `view` writes: the distribution of the parameter rows it comes
        from (every unit the same when one row is broadcast), or the measured values of a real tensor (a
        `torch.randn(...) * s` or a loaded checkpoint's tensor, not too big); None when it is not known."""
        if not isinstance(source_tensor, torch.Tensor):
            return None
        source = self._tracked.get(_key(source_tensor))
        if source is None:
            if source_tensor.is_meta or view.numel() > _MEASURABLE:
                return None
            return Dist("values", summary=_summarize(source_tensor.expand_as(view)), how=f"values copied in by {how}")
        rows = int(view.shape[0]) if view.dim() else 1
        broadcast = source_tensor.dim() < view.dim() or (
            source_tensor.dim() > 0 and rows > 1 and (source_tensor.shape[0] == 1 or source_tensor.stride(0) == 0)
        )
        if broadcast and source_tensor.dim() == view.dim():
            source_tensor = source_tensor.narrow(0, 0, 1)
        region = source.region(source_tensor)
        pieces = source.within(region) if region is not None else []
        if len(pieces) != 1:
            return None
        dist = pieces[0][2]
        if broadcast:
            return replace(dist, identical_units=True, how=f"{dist.describe()}, copied to every unit by {how}")
        return dist


def recorded_writes(tensors: Sequence[torch.Tensor], write: Callable[[], Any]) -> list[Init | None]:
    """The init `write()` gives each of `tensors` (on meta), as a record of a build would know it; None for a tensor
    it leaves partly unwritten or writes in a way the record cannot follow. Nothing is computed: this is how
    `--fix` plans a re-init of a model it fixes without weights."""
    recorder = InitRecorder()
    tracked = [recorder._track(t, unknown("not written")) for t in tensors]
    with recorder:
        write()
    return [Recorded(t.pieces, t.row_size) if all(d.known for _, _, d in t.pieces) else None for t in tracked]


def factory_on_meta(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """What a tensor factory call (`FACTORIES`) makes, made on meta instead: its shape and dtype at no cost.
    None when the call cannot be made so (an `out=` tensor, a generator)."""
    if "out" in kwargs:
        return None
    try:
        shaped = func(*args, **{**kwargs, "device": "meta"})
    except (TypeError, RuntimeError, ValueError):
        return None
    return shaped if isinstance(shaped, torch.Tensor) else None


def _drawn(factory: str, args: tuple[Any, ...], kwargs: dict[str, Any], how: str) -> Dist:
    """What a tensor factory fills its tensor with."""
    kind = factory.removeprefix("new_").removesuffix("_like")
    if kind in ("empty", "empty_strided"):
        return Dist("uninitialized", how=f"never initialized (created empty by {how} and not written)")
    if kind in ("zeros", "ones"):
        return Dist("constant", (0.0 if kind == "zeros" else 1.0,), how=how)
    if kind == "full":
        value = _scalar(kwargs.get("fill_value", args[-1] if len(args) > 1 else None))
        return Dist("constant", (value,), how=how) if value is not None else unknown(how)
    return Dist("uniform" if kind == "rand" else "normal", (0.0, 1.0), how=how)


def _after(dist: Dist, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], how: str, view: torch.Tensor, recorder: InitRecorder) -> Dist:
    """The distribution of rows after the in-place method `name` wrote them."""
    scalars = [_scalar(a) for a in args[1:]] + [_scalar(v) for k, v in kwargs.items() if k != "generator"]
    if name == "normal_":
        values = _method_arguments(args, kwargs, ("mean", "std"), (0.0, 1.0))
        return Dist("normal", values, how=how) if values is not None else unknown(how)
    if name == "uniform_":
        values = _method_arguments(args, kwargs, ("from", "to"), (0.0, 1.0))
        return Dist("uniform", values, how=how) if values is not None else unknown(how)
    if name in ("fill_", "zero_") or (name == "__setitem__" and not isinstance(args[2], torch.Tensor)):
        value = 0.0 if name == "zero_" else _scalar(args[-1] if name == "__setitem__" else (args[1] if len(args) > 1 else kwargs.get("value")))
        return Dist("constant", (value,), how=how) if value is not None else unknown(how)
    if name in ("copy_", "__setitem__"):
        copied = recorder.copied(args[-1] if name == "__setitem__" else args[1], view, how)
        return copied or unknown(f"values copied in by {how} (computed while building without weights, or too large to measure)")
    if name in ELEMENTWISE and None not in scalars:
        positional = tuple(_scalar(a) for a in args[1:])
        named = tuple((k, _scalar(v)) for k, v in kwargs.items())
        return dist.then(name, positional, named, how)
    return unknown(f"changed by {how}")


def _written(func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The tensor a call writes in place, if any."""
    if name == "__set__":
        return args[0] if getattr(func, "__self__", None) is torch.Tensor.data and args else None
    out = kwargs.get("out")
    if isinstance(out, torch.Tensor):
        return out
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    if name == "__setitem__" or (name.endswith("_") and not name.startswith("_") and name not in _NOT_WRITES):
        return args[0]
    return None


def _frame_of(codes: Container[Any]) -> Any:
    """The outermost frame on the stack running one of `codes` (the call the user made), if any."""
    frame, found = sys._getframe(2), None
    while frame is not None:
        if frame.f_code in codes:
            found = frame
        frame = frame.f_back
    return found


def _bound(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A dispatched nn.init call's arguments by name, defaults included."""
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _method_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, str], defaults: tuple[float, float]) -> tuple[float, float] | None:
    values = []
    for index, (name, default) in enumerate(zip(names, defaults)):
        raw = args[1 + index] if len(args) > 1 + index else kwargs.get(name, default)
        value = _scalar(raw)
        if value is None:
            return None
        values.append(value)
    return values[0], values[1]


def _kept_on_meta(tensor: torch.Tensor, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """`t.to(device)`, `t.cuda()`, `t.cpu()` of a tensor on meta: it stays there (it has no data to move); a
    dtype asked for still applies."""
    dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[1] if name == "to" else None
    return tensor.to(dtype=dtype) if dtype is not None and dtype != tensor.dtype else tensor


def _scalar(value: Any) -> float | None:
    """A Python number, or the value of a 0-dim real tensor; None for anything else (a meta tensor's value)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        return float(value.item())
    return None


def _summarize(tensor: torch.Tensor) -> Summary:
    """Measure real values before they are dropped for meta."""
    with torch.no_grad():
        values = tensor.detach().float()
        if values.numel() == 0:
            return Summary(0.0, 0.0, 0.0, (), 0.0)
        std, mean = Measured(values).std_mean() if values.dim() else (0.0, float(values))
        scale = float(values.abs().mean()) or 1.0
        spread = float(values.max() - values.min()) / scale
        spreads = tuple(
            float((units - units[0]).abs().max()) / scale
            for units in (values.movedim(d, 0).flatten(1) for d in range(min(values.dim(), 2)))
        ) if values.dim() >= 2 else (spread,)
        return Summary(std, mean, spread, spreads, float(values.flatten()[0]))


def _meta_copy(param: nn.Parameter) -> nn.Parameter:
    """The same parameter (class, flags, attributes) with its data on meta."""
    data = param.detach().to("meta")
    try:
        moved = type(param)(data, requires_grad=param.requires_grad)
    except TypeError:
        moved = nn.Parameter(data, requires_grad=param.requires_grad)
    moved.__dict__.update(param.__dict__)
    return moved


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Neighbouring pieces written by the same call are one piece."""
    merged: list[Piece] = []
    for piece in pieces:
        if merged and merged[-1][2] == piece[2] and merged[-1][1] == piece[0]:
            merged[-1] = (merged[-1][0], piece[1], piece[2])
        else:
            merged.append(piece)
    return merged


def _key(tensor: Any) -> int | None:
    """Identity of a tensor's storage: shared by all its views, `.data` and `.detach()`."""
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, AttributeError, ValueError):  # ValueError: a lazy module's parameter
        return None


def _where() -> tuple[str, int] | None:
    """The user's line that made the current call (the first frame outside this module and torch)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return first_user_site(_frames(frame))


def _text(where: tuple[str, int] | None) -> str:
    return f"{where[0]}:{where[1]}" if where else "?"


def _written_by(dist: Dist, where: tuple[str, int] | None, name: str, before: Dist | None = None) -> Dist:
    """`dist` with the user's call that wrote it: one more step of `before`'s chain (`w.normal_(); w.mul_(s)`), or a
    fresh write."""
    step = ((where[0], where[1], name),) if where is not None else ()
    continued = before is not None and before.known and dist.kind == before.kind and dist.chain[:-1] == before.chain and len(dist.chain) > len(before.chain)
    return replace(dist, writes=(before.writes if continued and before is not None else ()) + step)


def _frames(frame: Any) -> Iterator[tuple[str, int]]:
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back


def _is_simple(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)
