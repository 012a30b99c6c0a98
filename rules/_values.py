"""What a value in a script is, followed statically: the object a name holds (built by which constructor, of
which class), and what a tensor holds at a loss call (probabilities from a softmax or sigmoid, log-probabilities,
or a layer's raw scores), through assignments, `self.attr`, parameters, model calls and the model's `forward`.

Used by the loss-wiring rules (LOS) and the training-code rules that need the model (NRM005, NRM006). Unknown
stays None: no guess.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable, TypeVar

from auditor_rules._script import DEPTH, FUNCTIONS, Located, Script
from auditor_rules._training_code import dotted, literal, own_nodes

T = TypeVar("T")

SOFTMAX, SIGMOID, LOG_SOFTMAX, LOGITS = "softmax", "sigmoid", "log_softmax", "logits"

# Tensor methods and torch functions that keep what a tensor holds (its shape or device changes, not its meaning).
PASSTHROUGH = frozenset({
    "view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous", "float", "double", "half", "bfloat16", "to",
    "cpu", "cuda", "permute", "transpose", "type", "clone", "view_as", "reshape_as", "movedim", "t",
})
# Methods that hand back the module they are called on (`Net().to(device)`).
SAME_MODULE = frozenset({"to", "cuda", "cpu", "train", "eval", "float", "double", "half", "bfloat16", "requires_grad_", "type"})
# torch.nn modules by what their output holds.
MODULE_KINDS = {
    "Softmax": SOFTMAX, "Softmax2d": SOFTMAX, "Sigmoid": SIGMOID, "LogSoftmax": LOG_SOFTMAX,
    "Linear": LOGITS, "LazyLinear": LOGITS, "Bilinear": LOGITS, "Conv1d": LOGITS, "Conv2d": LOGITS, "Conv3d": LOGITS,
}
FUNCTION_KINDS = {"softmax": SOFTMAX, "sigmoid": SIGMOID, "expit": SIGMOID, "log_softmax": LOG_SOFTMAX}


@dataclass
class Built:
    """An object built by a constructor call: a torch class (`name` is its dotted path, `torch.nn.Softmax`), a
    class of the user's (`cls`), or anything else called (`timm.create_model`)."""

    name: str
    call: Located
    cls: tuple[Script, ast.ClassDef] | None = None

    @property
    def last(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def is_torch(self) -> bool:
        return self.name.startswith("torch.")


@dataclass
class Held:
    """What a tensor holds, and the node that made it so (the softmax call, the `nn.Softmax(...)` creation)."""

    kind: str
    at: Located
    model: str | None = None  # the model class whose forward returns it, when it comes out of a model call


def torch_name(script: Script, name: str | None) -> str | None:
    """A dotted name through the file's imports; `nn.X`/`F.x` written without a visible import read as torch's."""
    resolved = script.imports.resolve(name)
    if resolved is None:
        return None
    head = resolved.split(".")[0]
    if head == "nn" and "nn" not in script.imports.aliases:
        return "torch." + resolved
    if head == "F" and "F" not in script.imports.aliases:
        return "torch.nn.functional." + resolved[2:]
    return resolved


def _remembered(script: Script, key: tuple[str, int, int, int], compute: Callable[[], T]) -> T | None:
    """`compute()` once per file and key; None when asked again while it computes (a value defined through
    itself stays unknown)."""
    if key not in script.memo:
        script.memo[key] = None
        script.memo[key] = compute()
    return script.memo[key]  # type: ignore[return-value]


def built(script: Script, expr: ast.AST | None, use: ast.AST, depth: int = DEPTH) -> Built | None:
    """The object `expr` holds where `use` reads it: the constructor that built it."""
    if depth <= 0 or not isinstance(expr, ast.expr):
        return None
    return _remembered(script, ("built", id(expr), id(use), depth), lambda: _built(script, expr, use, depth))


def _built(script: Script, expr: ast.expr, use: ast.AST, depth: int) -> Built | None:
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr in SAME_MODULE:
            return built(script, func.value, use, depth - 1)
        name = dotted(func)
        if name is None:
            return None
        local = script.find_class(name)
        if local is not None:
            return Built(name, Located(script, expr), local)
        factory = script.find_function(name)
        if factory is not None:
            where, function = factory
            for value in _returns(function):
                found = built(where, value, value, depth - 1)
                if found is not None:
                    return found
            return None
        return Built(torch_name(script, name) or name, Located(script, expr))
    if isinstance(expr, ast.Name) and expr.id == "self":
        cls = script.class_of(use)
        return Built(cls.name, Located(script, cls), (script, cls)) if cls is not None else None
    name = dotted(expr)
    if name is None:
        return None
    if name.startswith("self.") and name.count(".") == 1:
        cls = script.class_of(use)
        value = script.attribute_value(cls, name[5:]) if cls is not None else None
        return built(script, value, value, depth - 1) if value is not None else None
    function = script.is_parameter(name, use)
    if function is not None:
        results = [built(script, arg, call, depth - 1) for arg, call in script.parameter_arguments(function, name)]
        known = [r for r in results if r is not None]
        if known and len(known) == len(results) and len({r.name for r in known}) == 1:
            return known[0]
        return None
    value = script.assigned_before(name, use)
    return built(script, value, value, depth - 1) if value is not None else None


def held(script: Script, expr: ast.AST | None, use: ast.AST, depth: int = DEPTH) -> Held | None:
    """What the tensor `expr` holds where `use` reads it: softmax or sigmoid probabilities, log-probabilities,
    or the raw output of a linear or conv layer; None when unknown or mixed."""
    if depth <= 0 or not isinstance(expr, ast.expr):
        return None
    return _remembered(script, ("held", id(expr), id(use), depth), lambda: _held(script, expr, use, depth))


def _held(script: Script, expr: ast.expr, use: ast.AST, depth: int) -> Held | None:
    if isinstance(expr, ast.Call):
        return _held_by_call(script, expr, use, depth)
    if isinstance(expr, ast.Subscript):
        return held(script, expr.value, use, depth - 1)
    if isinstance(expr, ast.IfExp):
        return _same(held(script, expr.body, use, depth - 1), held(script, expr.orelse, use, depth - 1))
    name = dotted(expr)
    if name is None or name.startswith("self."):
        return None
    function = script.is_parameter(name, use)
    if function is not None:  # what every call of the function passes
        results = [held(script, arg, call, depth - 1) for arg, call in script.parameter_arguments(function, name)]
        agreed = results[0] if results else None
        return agreed if all(_same(agreed, r) for r in results) else None
    value = script.assigned_before(name, use)
    return held(script, value, value, depth - 1) if isinstance(value, ast.expr) else None


def _held_by_call(script: Script, call: ast.Call, use: ast.AST, depth: int) -> Held | None:
    func = call.func
    name = torch_name(script, dotted(func)) or ""
    if name.startswith("torch."):  # F.softmax(x), torch.log(p), torch.flatten(x, 1)
        return _held_by_op(script, call, name.rpartition(".")[2], call.args[0] if call.args else None, use, depth)
    if isinstance(func, ast.Attribute) and func.attr == "forward":  # model.forward(x), self.forward(x)
        module = built(script, func.value, use, depth - 1)
        return _held_by_module(module, depth) if module is not None else None
    if isinstance(func, ast.Attribute) and not _is_self_attribute(func):
        return _held_by_op(script, call, func.attr, func.value, use, depth)  # x.softmax(-1), x.view(n, -1)
    module = built(script, func, use, depth - 1)  # model(x), self.head(x), nn.Softmax(1)(x)
    return _held_by_module(module, depth) if module is not None else None


def _held_by_op(script: Script, call: ast.Call, op: str, tensor: ast.expr | None, use: ast.AST, depth: int) -> Held | None:
    if op in FUNCTION_KINDS:
        return Held(FUNCTION_KINDS[op], Located(script, call))
    if tensor is None:
        return None
    if op == "log":
        inner = held(script, tensor, use, depth - 1)
        return Held(LOG_SOFTMAX, inner.at) if inner is not None and inner.kind == SOFTMAX else None
    if op in PASSTHROUGH:
        return held(script, tensor, use, depth - 1)
    return None


def _held_by_module(module: Built, depth: int) -> Held | None:
    if module.cls is not None:
        found = forward_holds(module.cls[0], module.cls[1], depth - 1)
        return Held(found.kind, found.at, found.model or module.cls[1].name) if found is not None else None
    if not module.is_torch:
        return None
    if module.last in MODULE_KINDS:
        return Held(MODULE_KINDS[module.last], module.call)
    if module.last == "Sequential":
        call = module.call.node
        layers = call.args if isinstance(call, ast.Call) else []
        if layers and not isinstance(layers[-1], ast.Starred):
            last = built(module.call.script, layers[-1], layers[-1], depth - 1)
            return _held_by_module(last, depth - 1) if last is not None else None
    return None


def forward_holds(script: Script, cls: ast.ClassDef, depth: int = DEPTH) -> Held | None:
    """What every `return` of the class's `forward` holds, when they all agree."""
    forward = next((m for m in cls.body if isinstance(m, FUNCTIONS) and m.name == "forward"), None)
    if forward is None or depth <= 0:
        return None
    found: Held | None = None
    for value in _returns(forward):
        kind = held(script, value, value, depth - 1)
        if kind is None or (found is not None and kind.kind != found.kind):
            return None
        found = found or kind
    return found


def _returns(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    """The values the function returns (not those of functions nested in it); a bare `return` counts as None."""
    found = [node.value if node.value is not None else ast.Constant(None) for node in own_nodes(function.body) if isinstance(node, ast.Return)]
    return sorted(found, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))


def _same(a: Held | None, b: Held | None) -> Held | None:
    return a if a is not None and b is not None and a.kind == b.kind else None


def _is_self_attribute(func: ast.expr) -> bool:
    name = dotted(func) or ""
    return name.startswith("self.") and name.count(".") == 1


UNKNOWN = "unknown"  # what `layer_in` says of a model built by code it cannot read
BATCH_NORM = re.compile(r"BatchNorm|batch_norm")
# torchvision's classification models that normalize with BatchNorm.
TORCHVISION_BATCH_NORM = re.compile(
    r"^torchvision\.models\.(\w+\.)?(resnet|resnext|wide_resnet|vgg\d+_bn|densenet|mobilenet|efficientnet|inception|"
    r"googlenet|shufflenet|mnasnet|regnet)"
)


def layer_in(module: Built, pattern: re.Pattern[str], keyword: str | None = None) -> Located | str | None:
    """Where the model names a layer matching `pattern` (`nn.BatchNorm2d(...)`, or a `keyword=` argument such as
    `dropout=0.1`): in its class, the local classes and helper functions it builds with, its local base classes,
    or its constructor call (`nn.Sequential(...)`). UNKNOWN when it builds something this cannot read (a class
    of another package); None when it was read through and has none."""
    if module.cls is not None:
        return _layer_in(module.cls[0], module.cls[1], pattern, keyword, set())
    if pattern is BATCH_NORM and TORCHVISION_BATCH_NORM.match(module.name):
        return module.call
    if not module.is_torch:
        return UNKNOWN
    return _layer_in(module.call.script, module.call.node, pattern, keyword, set())


def _layer_in(script: Script, code: ast.AST, pattern: re.Pattern[str], keyword: str | None, seen: set[int]) -> Located | str | None:
    if id(code) in seen:
        return None
    seen.add(id(code))
    unknown = False
    for node in ast.walk(code):
        name = dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name is not None and pattern.search(name):
            return Located(script, node)
        if keyword and isinstance(node, ast.keyword) and node.arg and keyword in node.arg and literal(node.value) not in (0, 0.0, None, False):
            return Located(script, node.value)
        if not isinstance(node, ast.Call):
            continue
        callee = dotted(node.func) or ""
        local = script.find_class(callee) or script.find_function(callee)
        if local is not None:
            found = _layer_in(local[0], local[1], pattern, keyword, seen)
            if found == UNKNOWN:
                unknown = True
            elif found is not None:
                return found
        elif callee[:1].isupper() and not (script.imports.resolve(callee) or "").startswith(("torch.", "nn.")):
            unknown = True  # a module class it cannot read
    for base in getattr(code, "bases", ()):
        local = script.find_class(dotted(base) or "")
        if local is not None:
            found = _layer_in(local[0], local[1], pattern, keyword, seen)
            if found is not None:
                return found
    return UNKNOWN if unknown else None

