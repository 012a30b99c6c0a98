"""Generate a self-contained `model.py` from a rewritten GraphModule: torch.nn constructors plus fx's forward.

Only torch.nn atoms are leaves of the tool's captures, so every submodule the forward calls can be rebuilt from
its class and hyper-parameters; every constructor is checked by building it and comparing its structure, repr
and parameter shapes with the live module. The forward is fx's own code generation (`python_code`), and its
globals must come from torch or the standard library: the file imports nothing but torch.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import keyword
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from auditor.files import installed
from auditor.fixing.rewrite import CannotFix

_SKIP_ARGS = {"device", "dtype", "_weight", "_freeze", "factory_kwargs"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_STANDARD_GLOBALS = {
    "torch": "import torch",
    "fx_pytree": "import torch.fx._pytree as fx_pytree",
    "pytree": "import torch.utils._pytree as pytree",
    "device": "from torch import device",
    "NoneType": "NoneType = type(None)",
    "inf": 'inf = float("inf")',
    "nan": 'nan = float("nan")',
}
_SAFE_ROOTS = {"torch", "operator", "_operator", "math", "builtins", "functools", "typing", "collections", "numbers"}


class Code(str):
    """Source text inserted as is (a nested constructor)."""


# --- module constructors -------------------------------------------------------------------------------------


def torch_class(module: nn.Module) -> type:
    """The module's own class when it is torch.nn's, else its nearest torch.nn base (a user subclass that keeps
    a torch.nn atom's forward, as the captures' leaf rule allows)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith(("torch.nn.", "torch.ao.nn.")):
            return cls
    raise CannotFix(f"`{type(module).__name__}` is not a torch.nn module")


def class_expression(cls: type) -> str:
    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def constructor(module: nn.Module) -> str:
    """`nn.Conv2d(3, 16, kernel_size=(3, 3), ...)`-style source that rebuilds `module` (weights aside).
    Raises CannotFix when no constructor call reproduces it."""
    cls = torch_class(module)
    special = _SPECIAL.get(cls.__name__)
    given = special(module) if special is not None else {}
    kwargs = {**_generic_arguments(cls, module, skip=set(given)), **given}
    text = f"{class_expression(cls)}({', '.join(f'{k}={literal(v)}' for k, v in kwargs.items())})"
    _check_rebuilt(module, text)
    return text


def _generic_arguments(cls: type, module: nn.Module, skip: set[str]) -> dict[str, Any]:
    """Constructor arguments read back from same-named attributes (`in_channels`, `eps`, `bias` as a flag)."""
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    found: dict[str, Any] = {}
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _SKIP_ARGS or p.name in skip:
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                raise CannotFix(f"cannot tell the `{p.name}` argument of {cls.__name__}")
            continue
        value = getattr(module, p.name)
        if p.name == "bias" and (value is None or isinstance(value, torch.Tensor)):
            value = value is not None
        if isinstance(value, torch.Size):
            value = tuple(value)
        if not _is_literal(value):
            if p.default is p.empty:
                raise CannotFix(f"cannot write the `{p.name}` argument of {cls.__name__} ({type(value).__name__})")
            continue
        if p.default is not p.empty and type(value) is type(p.default) and value == p.default:
            continue
        found[p.name] = value
    return found


def _rnn(module: nn.Module) -> dict[str, Any]:
    keys = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"]
    if isinstance(module, nn.RNN):
        keys.append("nonlinearity")
    if isinstance(module, nn.LSTM):
        keys.append("proj_size")
    return {k: getattr(module, k) for k in keys}


def _attention(module: nn.Module) -> dict[str, Any]:
    return {
        "embed_dim": module.embed_dim, "num_heads": module.num_heads, "dropout": module.dropout,
        "bias": module.in_proj_bias is not None, "add_bias_kv": module.bias_k is not None,
        "add_zero_attn": module.add_zero_attn, "kdim": module.kdim, "vdim": module.vdim, "batch_first": module.batch_first,
    }


def _transformer_layer(module: nn.Module) -> dict[str, Any]:
    activation = module.activation
    if activation is torch.nn.functional.relu:
        act: Any = "relu"
    elif activation is torch.nn.functional.gelu:
        act = "gelu"
    elif isinstance(activation, nn.Module):
        act = Code(constructor(activation))
    else:
        raise CannotFix(f"cannot write the activation {activation!r} of {type(module).__name__}")
    return {
        "d_model": module.self_attn.embed_dim, "nhead": module.self_attn.num_heads,
        "dim_feedforward": module.linear1.out_features, "dropout": module.dropout.p, "activation": act,
        "layer_norm_eps": module.norm1.eps, "batch_first": module.self_attn.batch_first,
        "norm_first": module.norm_first, "bias": module.linear1.bias is not None,
    }


def _transformer_stack(module: nn.Module) -> dict[str, Any]:
    layer_key = "encoder_layer" if isinstance(module, nn.TransformerEncoder) else "decoder_layer"
    found: dict[str, Any] = {
        layer_key: Code(constructor(module.layers[0])),
        "num_layers": len(module.layers),
        "norm": Code(constructor(module.norm)) if module.norm is not None else None,
    }
    if isinstance(module, nn.TransformerEncoder):
        found["enable_nested_tensor"] = module.enable_nested_tensor
        found["mask_check"] = module.mask_check
    return found


def _parameter_list(module: nn.Module) -> dict[str, Any]:
    """ParameterList/ParameterDict: their parameters are their content (shapes here; values come with the weights)."""
    def empty(p: torch.Tensor) -> str:
        grad = "" if p.requires_grad else ", requires_grad=False"
        return f"nn.Parameter(torch.empty({literal(tuple(p.shape))}, dtype={p.dtype}){grad})"

    if isinstance(module, nn.ParameterDict):
        return {"parameters": Code("{" + ", ".join(f"{k!r}: {empty(p)}" for k, p in module.items()) + "}")}
    return {"values": Code("[" + ", ".join(empty(p) for p in module) + "]")}


_SPECIAL: dict[str, Callable[[nn.Module], dict[str, Any]]] = {
    "ParameterList": _parameter_list, "ParameterDict": _parameter_list,
    "RNN": _rnn, "LSTM": _rnn, "GRU": _rnn,
    "MultiheadAttention": _attention,
    "TransformerEncoderLayer": _transformer_layer, "TransformerDecoderLayer": _transformer_layer,
    "TransformerEncoder": _transformer_stack, "TransformerDecoder": _transformer_stack,
}


class _NoMetaWrites(TorchFunctionMode):
    """Skips in-place writes into meta tensors (a constructor's `reset_parameters`): they compute nothing, and
    the first random draw on meta imports torch._dynamo to find its meta function (4 s for an nn.Embedding)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # nn.init functions pass theirs by keyword
        if name.endswith("_") and not name.endswith("__") and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def _check_rebuilt(module: nn.Module, text: str) -> None:
    """Build the constructor (on the meta device, its initialization skipped: no memory, no init cost) and
    compare it with the live module: structure, repr and parameter shapes."""
    try:
        with torch.device("meta"), _NoMetaWrites():
            rebuilt = eval(text, {"nn": nn, "torch": torch, "inf": math.inf, "nan": math.nan})  # noqa: S307 - our own text
    except Exception as exc:  # noqa: BLE001
        raise CannotFix(f"cannot rebuild {type(module).__name__} with `{text}`: {type(exc).__name__}: {exc}") from exc
    if _structure(rebuilt) != _structure(module):
        raise CannotFix(f"`{text}` does not rebuild {type(module).__name__} faithfully (its settings differ)")


def _structure(module: nn.Module) -> list[tuple[Any, ...]]:
    parts: list[tuple[Any, ...]] = []
    for name, sub in module.named_modules():
        parts.append((name, torch_class(sub).__name__ if not isinstance(sub, _CONTAINERS) else type(sub).__name__, sub.extra_repr()))
    for name, tensor in module.state_dict().items():
        parts.append((name, tuple(tensor.shape)))
    return parts


def literal(value: Any) -> str:
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    if isinstance(value, (tuple, list)):
        items = ", ".join(literal(v) for v in value)
        if isinstance(value, tuple):
            return f"({items},)" if len(value) == 1 else f"({items})"
        return f"[{items}]"
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)


def _is_literal(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str, Code, torch.dtype))


# --- the model file ------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """What `render_model` needs besides the GraphModule."""

    class_name: str
    origin: str  # the audited target, for the docstring
    summary: list[str] = field(default_factory=list)  # one line per applied fix
    has_inputs_file: bool = False
    input_specs: list[str] = field(default_factory=list)
    inits: str | None = None  # a model fixed without its weights: the `INITS = [...]` its load_model() draws
    buffers: list[str] = field(default_factory=list)  # ... and the buffers whose values are in buffers.pt


def attribute_lines(gm: fx.GraphModule) -> tuple[list[str], list[str]]:
    """`_attach(self, NAME, VALUE)` lines that rebuild every submodule, parameter and buffer of `gm` (a module
    held at two paths is attached twice, as the same object), and notes about modules rebuilt as their torch.nn
    base class."""
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    lines: list[str] = []
    notes: list[str] = []
    built: list[str] = []  # leaves and repeated modules: their children come with them
    first: dict[int, str] = {}
    for name, module in gm.named_modules(remove_duplicate=False):
        if any(name.startswith(prefix + ".") for prefix in built):
            continue
        if name and id(module) in first:
            lines.append(f"_attach(self, {name!r}, self.get_submodule({first[id(module)]!r}))")
            built.append(name)
            continue
        first[id(module)] = name
        if name:
            if name in called or not _is_container(module):
                text = constructor(module)
                if type(module) is not torch_class(module):
                    notes.append(f"`{name}` ({type(module).__name__}) is rebuilt as its torch.nn base {torch_class(module).__name__}")
                built.append(name)
                lines.append(f"_attach(self, {name!r}, {text})")
                continue
            kind = type(module).__name__ if isinstance(module, _CONTAINERS) else "Module"
            lines.append(f"_attach(self, {name!r}, nn.{kind}())")
        prefix = f"{name}." if name else ""
        for pname, param in module._parameters.items():
            if param is not None:
                lines.append(f"_attach(self, {prefix + pname!r}, nn.Parameter({_empty(param)}))")
        for bname, buffer in module._buffers.items():
            if buffer is not None:
                persistent = bname not in module._non_persistent_buffers_set
                flag = "" if persistent else ", persistent=False"
                lines.append(f"_attach(self, {prefix + bname!r}, {_empty(buffer)}, buffer=True{flag})")
    return lines, notes


def _is_container(module: nn.Module) -> bool:
    return type(module) is nn.Module or isinstance(module, _CONTAINERS) or isinstance(module, fx.GraphModule)


def _empty(tensor: torch.Tensor) -> str:
    return f"torch.empty({literal(tuple(tensor.shape))}, dtype={tensor.dtype})"


def forward_source(gm: fx.GraphModule, notes: list[str] | None = None) -> tuple[str, list[str]]:
    """The forward's source (indented for a class body) and the module-level lines it needs: imports of its
    globals, then fx's own top-level statements (`torch.fx.wrap(...)` of functions it keeps as leaves)."""
    code = gm.graph.python_code(root_module="self")
    src = textwrap.dedent(code.src).strip("\n")
    start = re.search(r"^def forward\(", src, re.M)
    prelude, src = (src[: start.start()].strip("\n"), src[start.start():]) if start else ("", src)
    imports = ["import torch"]
    for name, value in code.globals.items():
        if not re.search(rf"\b{re.escape(name)}\b", src + prelude):
            continue
        line = _import_line(name, value, notes if notes is not None else [])
        if line and line not in imports:
            imports.append(line)
    if prelude:
        imports.append(prelude)
    return textwrap.indent(src, "    "), imports


def _installed(module_name: str) -> bool:
    """Whether a module comes from an installed package (site-packages), not from the user's own files."""
    path = getattr(sys.modules.get(module_name), "__file__", None)
    return bool(path) and installed(path)


def _import_line(name: str, value: Any, notes: list[str]) -> str | None:
    if name in _STANDARD_GLOBALS:
        return _STANDARD_GLOBALS[name]
    if getattr(builtins, name, None) is value:
        return None
    if inspect.ismodule(value):
        root = value.__name__.split(".")[0]
        if root not in _SAFE_ROOTS and root not in sys.stdlib_module_names:
            if not _installed(value.__name__):
                raise CannotFix(f"the forward uses your module `{value.__name__}`; the fixed model would not be self-contained")
            notes.append(f"the fixed model imports `{value.__name__}` (package `{root}`), which its forward uses")
        return f"import {value.__name__} as {name}" if value.__name__ != name else f"import {name}"
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if not module_name or not qualname:
        raise CannotFix(f"the forward uses `{name}` ({type(value).__name__}), which cannot be written as code")
    root = module_name.split(".")[0]
    if root not in _SAFE_ROOTS and root not in sys.stdlib_module_names:
        if not _installed(module_name):
            raise CannotFix(
                f"the forward calls `{module_name}.{qualname}` from your code; the fixed model would not be "
                "self-contained (it may import torch, the standard library and installed packages only)"
            )
        notes.append(f"the fixed model imports `{module_name}` (package `{root}`), which its forward calls")
    if _resolve(module_name, qualname) is not value:
        raise CannotFix(f"`{module_name}.{qualname}` cannot be imported back")
    if "." in qualname:
        return f"import {module_name}\n{name} = {module_name}.{qualname}"
    return f"from {module_name} import {qualname}" + (f" as {name}" if name != qualname else "")


def _resolve(module_name: str, qualname: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None


def unwritable(gm: fx.GraphModule) -> str | None:
    """Why no `model.py` can be generated for this GraphModule (a module no torch.nn constructor rebuilds, a
    forward that calls the user's own functions), or None. Builds nothing but meta-device modules."""
    try:
        attribute_lines(gm)
        forward_source(gm)
    except CannotFix as exc:
        return str(exc)
    return None


def class_name_for(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name) or "FixedModel"
    if cleaned[0].isdigit() or keyword.iskeyword(cleaned) or cleaned in {"nn", "torch", "os"}:
        cleaned = f"Fixed{cleaned}"
    return cleaned


def render_model(gm: fx.GraphModule, source: ModelSource) -> tuple[str, list[str]]:
    """The text of `model.py` and notes for the user."""
    attributes, notes = attribute_lines(gm)
    forward, imports = forward_source(gm, notes)
    ties = _ties(gm)
    frozen = [n for n, p in gm.named_parameters() if not p.requires_grad]
    unsaved = sorted(unsaved_buffers(gm))
    without_weights = source.inits is not None
    changes = "\n".join(f"  - {line}" for line in source.summary) or "  (none: the model is unchanged)"
    inputs_doc = (
        "example_inputs() returns the inputs the audit ran it on (inputs.pt)."
        if source.has_inputs_file
        else f"example_inputs() makes inputs of the audited shapes ({' '.join(source.input_specs) or 'none'})."
    )
    header = f'''"""{source.class_name}, fixed by `audit --fix` (auditor) from {source.origin}.

Changes:
{changes}

{_WITHOUT_WEIGHTS_DOC if without_weights else _WEIGHTS_DOC}

    import sys; sys.path.insert(0, "path/to/this/folder")
    import model; net = model.load_model()   # in eval mode, every submodule alike; .train() to train it

or audit it again with `audit path/to/this/folder`. {inputs_doc}
"""
'''
    body = "\n".join(f"        {line}" for line in attributes) or "        pass"
    text = f'''{header}
import os

{chr(10).join(imports)}
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
TIED = {ties!r}  # (parameter, the parameter it shares storage with)
FROZEN = {frozen!r}  # parameters with requires_grad=False
UNSAVED = {unsaved!r}  # non-persistent buffers (not in state_dict()){"" if without_weights else ": their values are in buffers.pt"}
{_init_table(source) if without_weights else ""}

class {source.class_name}({"nn.Sequential" if isinstance(gm, nn.Sequential) else "nn.Module"}):
    def __init__(self):
        super().__init__()
{body}

{forward}


def _attach(root, qualname, value, buffer=False, persistent=True):
    """Register a submodule, parameter or buffer under its qualified name."""
    path, _, name = qualname.rpartition(".")
    owner = root.get_submodule(path) if path else root
    if buffer:
        owner.register_buffer(name, value, persistent=persistent)
    elif isinstance(value, nn.Parameter):
        owner.register_parameter(name, value)
    else:
        owner.add_module(name, value)


{_load_without_weights(source) if without_weights else _LOAD_WEIGHTS.format(name=source.class_name)}


def build_model():
    """The contract's factory name: the same as load_model()."""
    return load_model()


{_example_inputs_source(source)}
'''
    return text, notes


_WEIGHTS_DOC = """Self-contained: needs only torch; weights are in weights.pt next to this file (tensors only, loaded with
weights_only=True). Load it from anywhere:"""
_WITHOUT_WEIGHTS_DOC = """Self-contained: needs only torch. It holds no trained weights: the model was fixed without them (it was
audited on the meta device; see FIXES.md). load_model() builds it and initializes every parameter as INITS says
(the init calls recorded while the audited model was built, and the fixes' re-inits), from torch's global RNG:
seed it with torch.manual_seed() for reproducible weights, or load a checkpoint with model.load_state_dict().
Load it from anywhere:"""

_LOAD_WEIGHTS = '''def load_model(device="cpu"):
    """The fixed model with its weights, on `device`, in eval mode (call .train() to train it)."""
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = {name}()
    state = torch.load(os.path.join(HERE, "weights.pt"), map_location=device, weights_only=True)
    model.load_state_dict(state, assign=True)
    if UNSAVED:
        buffers = torch.load(os.path.join(HERE, "buffers.pt"), map_location=device, weights_only=True)
        for name in UNSAVED:
            _attach(model, name, buffers[name], buffer=True, persistent=False)
    for name, same_as in TIED:
        _attach(model, name, model.get_parameter(same_as))
    for name in FROZEN:
        model.get_parameter(name).requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()  # cuDNN wants the loaded weights in one chunk again
    return model.eval()'''


def _init_table(source: ModelSource) -> str:
    """INITS, BUFFERS and the function that applies INITS, for a model fixed without its weights."""
    return f'''
BUFFERS = {source.buffers!r}  # buffers whose values (computed by the audited model's __init__) are in buffers.pt

# How load_model() initializes each parameter: (nn.init function, its arguments, elementwise steps after it,
# [parameter, or (parameter, first row, end row)]). Parameters not listed keep their module's default init.
{source.inits}


{_INITIALIZE}
'''


_INITIALIZE = '''def _initialize(model):
    """Draw every parameter listed in INITS (from torch's global RNG)."""
    with torch.no_grad():
        for function, arguments, steps, targets in INITS:
            for target in targets:
                name, rows = (target, None) if isinstance(target, str) else (target[0], slice(target[1], target[2]))
                tensor = model.get_parameter(name)
                region = tensor if rows is None else tensor[rows]
                getattr(nn.init, function)(region, **arguments)
                for method, args, kwargs in steps:
                    getattr(region, method)(*args, **kwargs)'''


def _load_without_weights(source: ModelSource) -> str:
    return f'''def load_model(device="cpu"):
    """The fixed architecture on `device` ("meta": shapes only, no memory), initialized as INITS says, in eval
    mode (call .train() to train it). It has no trained weights: see FIXES.md."""
    with torch.device(device):
        model = {source.class_name}()
    _initialize(model)
    if BUFFERS:
        buffers = torch.load(os.path.join(HERE, "buffers.pt"), map_location=device, weights_only=True)
        for name in BUFFERS:
            _attach(model, name, buffers[name], buffer=True, persistent=name not in UNSAVED)
    for name, same_as in TIED:
        _attach(model, name, model.get_parameter(same_as))
    for name in FROZEN:
        model.get_parameter(name).requires_grad_(False)
    return model.eval()'''


def unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The non-persistent buffers (which `state_dict()` leaves out), by qualified name."""
    return {f"{name}.{b}" if name else b: module._buffers[b] for name, module in model.named_modules()
            for b in module._non_persistent_buffers_set if module._buffers.get(b) is not None}


def _example_inputs_source(source: ModelSource) -> str:
    if source.has_inputs_file:
        return '''def example_inputs():
    """The inputs the audit ran this model on."""
    return tuple(torch.load(os.path.join(HERE, "inputs.pt"), weights_only=True))
'''
    return f'''def example_inputs():
    """Inputs of the shapes the audit used: {' '.join(source.input_specs)}."""
    generator = torch.Generator().manual_seed(0)
    specs = {[_spec_tuple(s) for s in source.input_specs]!r}
    made = []
    for dtype, shape in specs:
        kind = getattr(torch, dtype)
        if kind.is_floating_point:
            made.append(torch.randn(shape, generator=generator).to(kind))
        else:
            made.append(torch.randint(0, 2, shape, generator=generator).to(kind))
    return tuple(made)
'''


def _spec_tuple(spec: str) -> tuple[str, tuple[int, ...]]:
    dtype, _, dims = spec.rpartition(":")
    return dtype or "float32", tuple(int(d) for d in dims.split(","))


def _ties(gm: fx.GraphModule) -> list[tuple[str, str]]:
    first: dict[int, str] = {}
    ties = []
    for name, param in gm.named_parameters(remove_duplicate=False):
        if id(param) in first:
            ties.append((name, first[id(param)]))
        else:
            first[id(param)] = name
    return ties



# --- models torch.fx cannot trace: the user's code rebuilds them -------------------------------------------------


def render_weights_loader(origin: dict[str, Any], dropped: list[str], target: str, summary: list[str], has_inputs: bool,
                          input_specs: list[str], inits: str | None = None) -> str:
    """`model.py` for a model whose code cannot be regenerated: build the model again from the user's source (by
    file path, else by module name) or, for a Hugging Face config, from the config.json copied next to it; remove
    the parameters a fix removed (a folded bias); then load the fixed weights, or, for a model fixed without its
    weights (`inits`: the INITS of the parameters the fixes re-initialized), draw those parameters."""
    changes = "\n".join(f"  - {line}" for line in summary) or "  (none: the weights are unchanged)"
    source = ModelSource(class_name="", origin=target, has_inputs_file=has_inputs, input_specs=input_specs)
    from_config = "config" in origin
    built = ("load_model() builds the model from config.json next to this file with transformers, as the audit did"
             if from_config else "load_model() imports your source again\n(ORIGIN below: that file must still exist), "
             "builds the model the way the audit did")
    if inits is None:
        what = f"Fixed weights for {target}"
        then = ("and loads the fixed weights\nfrom weights.pt next to this file (tensors only)."
                + ("" if from_config else " This folder can move; your source cannot."))
        finish = '''    state = torch.load(os.path.join(HERE, "weights.pt"), map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()'''
        table = ""
    else:
        what = f"The fixed {target}, without weights"
        then = ("and\nre-initializes what the fixes changed (INITS below): the model was fixed without its weights "
                "(it was audited\non the meta device; see FIXES.md), so it has your code's init, not trained weights.")
        finish = '''    _initialize(model)
    return model.eval()'''
        table = f"""
# The parameters the fixes re-initialized: (nn.init function, its arguments, elementwise steps after it,
# [parameter, or (parameter, first row, end row)]); the others keep the init your code gives them.
{inits}


{_INITIALIZE}
"""
    return f'''"""{what}, written by `audit --fix` (auditor).

Changes:
{changes}

torch.fx could not trace this model, so its code is not regenerated: {built}, {then}

    import sys; sys.path.insert(0, "path/to/this/folder")
    import model; net = model.load_model()   # in eval mode; .train() to train it
"""

{"import json" if from_config else _SOURCE_IMPORTS}
import os{"" if from_config else chr(10) + "import sys"}

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGIN = {origin!r}
DROPPED = {dropped!r}  # parameters the fixes removed (set to None after building)
{table}

{_CONFIG_BUILD if from_config else _SOURCE_BUILD}


def load_model(device="cpu"):
    """The model built again, {"with the fixed weights" if inits is None else "its fixed parameters re-initialized"}, on `device`, in eval mode (.train() to train it)."""
    with torch.device(device):
        model = _build()
    for name in DROPPED:
        path, _, attr = name.rpartition(".")
        owner = model.get_submodule(path) if path else model
        owner.register_parameter(attr, None)
{finish}


{_example_inputs_source(source)}
'''


_SOURCE_BUILD = '''def _import_origin():
    path = ORIGIN.get("file")
    if path and os.path.isfile(path):
        folder, parts = os.path.dirname(path), [os.path.splitext(os.path.basename(path))[0]]
        while os.path.isfile(os.path.join(folder, "__init__.py")):
            parts.insert(0, os.path.basename(folder))
            folder = os.path.dirname(folder)
        if len(parts) > 1:
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return importlib.import_module(".".join(parts))
        spec = importlib.util.spec_from_file_location("_auditor_origin_" + parts[0], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if path:
        raise FileNotFoundError(f"the model's source {path} is gone; this folder holds only its fixed weights")
    return importlib.import_module(ORIGIN["module"])


def _build():
    obj = getattr(_import_origin(), ORIGIN["name"])
    return copy.deepcopy(obj) if isinstance(obj, torch.nn.Module) else obj(**ORIGIN["kwargs"])'''

_CONFIG_BUILD = '''def _build():
    """The architecture config.json describes, built by transformers (its "architectures" class, else AutoModel)."""
    import transformers

    with open(os.path.join(HERE, "config.json"), encoding="utf-8") as file:
        fields = {**json.load(file), **ORIGIN["kwargs"]}
    config = transformers.AutoConfig.for_model(**fields)
    for name in fields.get("architectures") or []:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return getattr(cls, "_from_config", cls)(config)
    return transformers.AutoModel.from_config(config)'''

_SOURCE_IMPORTS = """import copy
import importlib
import importlib.util"""
