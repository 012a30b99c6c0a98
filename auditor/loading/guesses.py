"""Guessing a model's inputs: a few candidate specs per forward argument, combined into whole candidates.

Each argument's proposals come from, in this order: the argument's role by name where the name is
unambiguous (`lengths`, a `mask`), the traced forward (`loading/consumers.py`: the layer that first consumes
it, a weight it is multiplied by, another argument's rows it pairs with, a per-sample timestep, an RNN state),
the name again where the forward could not be traced (`t`, `y`, `adj`, `hidden`), and last a fallback (the
first layer in registration order for the first argument; like the first argument, or one value per sample,
for the others). Sizes the model fixes (a learned position table, a patch grid) come first; each proposal
says where it came from, which the result shows ("input guessed: idx long 2x32 from Embedding(1000, 64) and
pos_emb[32]"). `prepare.py` ranks the candidates on fake tensors and runs the model on the first that fits.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from auditor.errors import TargetError, UsageError
from auditor.loading.arguments import parameters
from auditor.loading.consumers import Forward, Table, Use, layer_label, read_forward
from auditor.specs import ArgumentHint, CallHint, InputSpec, LEFT_AT, SCALAR_TYPES, ScalarSpec, Spec, TupleSpec, inputs_text, parse_spec

BATCH = 2
SEQUENCE = 16
MAX_CANDIDATES = 24
LENGTHS = re.compile(r"^(?:\w+_)?(?:lengths?|lens?|seq_lens?|seq_lengths?|num_tokens)$")
STATES = ("hidden", "hx", "h0", "h_0", "c0", "c_0", "hc", "h_c", "state", "states", "hidden_state", "init_state", "initial_state")
_TIMESTEPS = re.compile(r"^(?:t|ts|time|times|timesteps?|time_?steps?|diffusion_steps?|steps?|noise_levels?|sigmas?|t_?in)$")
_FLOAT_TIMES = re.compile(r"^(?:sigmas?|noise_levels?)$")
_LABELS = re.compile(r"^(?:y|labels?|class_labels?|class_ids?|classes|cls|class_idx|target_class)$")
_ADJACENCY = re.compile(r"^(?:adj|adjacency|adj_matrix|adj_mat|a_hat|a|graph|g)$", re.IGNORECASE)
_MASKS = re.compile(r"mask")
_PADDING_MASKS = re.compile(r"padding_mask|pad_mask")
_ROLE_NAMES = re.compile("|".join(f"(?:{p.pattern})" for p in (LENGTHS, _TIMESTEPS, _LABELS)) + f"|(?i:{_ADJACENCY.pattern})|mask|^edge_index$|"
                         + "|".join(f"^{name}$" for name in STATES))  # names that say what an argument is
_DECODER_INPUTS = ("decoder_input_ids", "decoder_inputs", "decoder_input", "tgt", "trg", "target_ids")
_POSITION_TABLES = re.compile(r"(?:^|[._])(?:pos|position|positional|wpe|pos_embed|pos_embedding|positional_embedding|embed_positions|position_embeddings?)(?:$|[._])")


@dataclass(frozen=True)
class Proposal:
    """One argument's guess: its spec (None: an optional argument left at None before a fed one) and where it
    came from."""

    spec: Spec | None
    source: str


@dataclass(frozen=True)
class Candidate:
    """A guess for every fed argument, in forward order."""

    names: tuple[str, ...]
    proposals: tuple[Proposal, ...]

    @property
    def specs(self) -> list[Spec | None]:
        return [p.spec for p in self.proposals]

    def __str__(self) -> str:
        return " ".join(str(p.spec) if p.spec is not None else "None" for p in self.proposals)

    def described(self) -> str:
        """`idx long 2x32 from Embedding(1000, 64) and pos_emb[32]; t long 2 as a timestep, by its name`."""
        return inputs_text((name, str(p.spec), p.source) for name, p in zip(self.names, self.proposals))


@dataclass(frozen=True)
class Argument:
    name: str
    index: int  # position among the forward's positional parameters
    annotation: Any
    left_out: bool = False  # an optional parameter not passed, before one that is fed: left at its default
    default: Any = None
    hint: ArgumentHint | None = None  # what the repository's call passes for it

    @property
    def role(self) -> str:
        """The name its role is read from: its own, or, when that says nothing, the name the repository's call
        passes (`forward(self, x, c)` called as `model(images, timesteps)`)."""
        text = self.hint.text if self.hint is not None else ""
        if _ROLE_NAMES.search(self.name) or not text.isidentifier():
            return self.name
        return text


@dataclass(frozen=True)
class Options:
    """An argument's proposals: `fixed` ones, after those `derive` makes from the spec chosen for the argument
    `after` (a mask over the tokens' positions, an adjacency over the nodes' rows)."""

    fixed: tuple[Proposal, ...] = ()
    after: str | None = None
    derive: Callable[[Optional[Spec]], list[Proposal]] | None = None
    given: Proposal | None = None  # what the repository's call makes: first, whatever is derived

    def proposals(self, chosen: dict[str, Optional[Spec]]) -> list[Proposal]:
        derived = self.derive(chosen.get(self.after)) if self.derive is not None and self.after is not None else []
        found = [*derived, *self.fixed]
        return found if self.given is None else [self.given, *[p for p in found if p is not self.given]]


@dataclass(frozen=True)
class Guesses:
    """The candidates for a model's inputs, best first, and what they were combined from (to vary one
    argument of a candidate: `varied`)."""

    names: tuple[str, ...]
    options: dict[str, Options]
    candidates: list[Candidate]

    def least_certain_first(self) -> list[str]:
        """The arguments to vary first when no candidate fits: those derived from others (masks), then the rest
        from the last (the first argument's guess, from its consuming layer, is the surest)."""
        derived = [n for n in self.names if self.options[n].derive is not None]
        return derived + [n for n in reversed(self.names) if n not in derived]

    def varied(self, candidate: Candidate, name: str) -> list[Candidate]:
        """`candidate` with each other proposal for argument `name`; the arguments derived from it (a mask over
        its positions) derived again, at the same rank among their proposals."""
        chosen = dict(zip(self.names, candidate.proposals))
        ranks = {n: _rank(self.options[n].proposals(_specs(chosen)), chosen[n]) for n in self.names}
        found = []
        for proposal in self.options[name].proposals(_specs(chosen)):
            if proposal == chosen[name]:
                continue
            other = {**chosen, name: proposal}
            for dependent in (n for n in self.names if self.options[n].after == name):
                derived = self.options[dependent].proposals(_specs(other))
                if not derived:
                    break
                other[dependent] = derived[min(ranks[dependent], len(derived) - 1)]
            else:
                found.append(Candidate(self.names, tuple(other[n] for n in self.names)))
        return found


def _specs(chosen: dict[str, Proposal]) -> dict[str, Optional[Spec]]:
    return {name: proposal.spec for name, proposal in chosen.items()}


def _rank(proposals: list[Proposal], proposal: Proposal) -> int:
    return proposals.index(proposal) if proposal in proposals else 0


def infer_candidates(model: nn.Module, call: CallHint | None = None) -> list[Candidate]:
    """Whole candidates, best first (`guesses(model, call).candidates`)."""
    return guesses(model, call).candidates


def guesses(model: nn.Module, call: CallHint | None = None) -> Guesses:
    """Whole candidates, best first: every argument's first proposal, then the combinations that change
    fewest and earliest choices (at most MAX_CANDIDATES). `call`: the repository's own call of the model,
    whose specs come first and whose argument names are read as the forward's are."""
    arguments = fed_arguments(model, call)
    if not arguments:
        raise TargetError("cannot infer the model's inputs (its forward takes no argument); pass --input for each")
    guesser = _Guesser(model, read_forward(model))
    options: dict[str, Options] = {}
    for argument in arguments:
        found = guesser.options(argument, arguments)
        given = _given(argument, call, every=all(a.left_out or (a.hint is not None and a.hint.spec) for a in arguments))
        if given is not None and isinstance(given.spec, ScalarSpec):  # a plain value is what it is: no alternative
            options[argument.name] = Options((given,), given=given)
            continue
        if given is not None:
            found = Options((given, *found.fixed), found.after, found.derive, given) if found is not None else Options((given,))
        if found is None:
            raise TargetError(f"cannot infer input {argument.name!r}{guesser.consumer_text(argument.name)}; pass --input SPEC "
                              "for each argument")
        options[argument.name] = found
    names = tuple(a.name for a in arguments)
    combinations = _combinations(names, options)
    if not combinations:
        raise TargetError(f"cannot infer inputs that fit together for {', '.join(names)}; pass --input SPEC for each argument")
    return Guesses(names, options, [Candidate(names, tuple(combo[name] for name in names)) for combo in combinations])


def positional_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """The forward's positional parameters, in order (none when its signature cannot be read)."""
    return [p for p in parameters(model.forward) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def fed_arguments(model: nn.Module, call: CallHint | None = None) -> list[Argument]:
    """The forward arguments to feed (`left_out`: passed as None): the required positional ones, and those the
    repository's call passes. When every one is optional (Hugging Face's `forward(input_ids=None,
    attention_mask=None, ...)`), the first, and a decoder's input when there is one (`decoder_input_ids`: an
    encoder-decoder needs both). Optional ones before the last fed one are left at their defaults."""
    positional = positional_parameters(model)
    annotations = _type_hints(model)
    passed = _bound(call, [p.name for p in positional])
    arguments = [Argument(p.name, i, annotations.get(p.name, p.annotation), hint=passed.get(p.name), default=p.default)
                 for i, p in enumerate(positional)]
    fed = [a for a, p in zip(arguments, positional) if p.default is p.empty or (a.hint is not None and a.hint.text != "None")]
    if not fed and arguments:
        decoder = next((a for a in arguments[1:] if a.name in _DECODER_INPUTS), None)
        fed = [arguments[0]] if decoder is None else [arguments[0], decoder]
    if not fed:
        return []
    chosen = {a.name for a in fed}
    return [a if a.name in chosen else replace(a, left_out=True) for a in arguments[: fed[-1].index + 1]]


def _given(argument: Argument, call: CallHint | None, every: bool) -> Proposal | None:
    """The spec the repository's call makes for the argument. When other arguments are guessed, its batch (the
    first dim) becomes the guesses' own, so that they fit together."""
    if call is None or argument.hint is None or argument.hint.spec is None:
        return None
    try:
        spec = parse_spec(argument.hint.spec)
    except UsageError:
        return None
    if isinstance(spec, ScalarSpec):
        return Proposal(spec, f"as {call.site} passes it")
    if every or not isinstance(spec, InputSpec) or spec.shape[0] == BATCH:
        return Proposal(spec, f"as {call.site} makes it")
    return Proposal(InputSpec(spec.dtype, (BATCH, *spec.shape[1:])), f"as {call.site} makes it, with a batch of {BATCH}")


def _bound(call: CallHint | None, names: list[str]) -> dict[str, ArgumentHint]:
    """The call's arguments by the forward parameter each fills."""
    if call is None:
        return {}
    bound = dict(zip(names, call.args))
    bound.update((name, hint) for name, hint in call.kwargs if name in names)
    return bound


def _type_hints(model: nn.Module) -> dict[str, Any]:
    try:
        return typing.get_type_hints(type(model).forward)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: the raw ones are used
        return {}


class _Guesser:
    def __init__(self, model: nn.Module, forward: Forward | None) -> None:
        self.model = model
        self.forward = forward
        self.tables_by_name = None if forward is not None else _named_tables(model)

    # --- per argument ---------------------------------------------------------------------------------------
    def options(self, argument: Argument, arguments: list[Argument]) -> Options | None:
        name, role, first = argument.name, argument.role, arguments[0]
        if argument.left_out:  # its default: a number or a flag as it is (`teacher_forcing_ratio=0.5`), else None
            if argument.hint is None and isinstance(argument.default, SCALAR_TYPES) and argument.default is not None:
                return Options((Proposal(ScalarSpec(argument.default), f"{LEFT_AT} its default"),))
            return Options((Proposal(None, f"{LEFT_AT} None"),))
        if argument.index > 0 and LENGTHS.match(role):
            return _fixed([Proposal(InputSpec("int64", (BATCH,)), "as valid lengths of the sequences, by its name")])
        if argument is not first and _MASKS.search(role):
            return Options(after=first.name, derive=lambda partner: _mask_proposals(role, first.name, partner))
        if argument is first and _layer_specs(self.model):  # the model is itself one layer (nn.Linear, nn.LSTM)
            return _fixed(_layer_proposals(self.model, self.model))
        use = self.forward.use(name) if self.forward is not None else None
        if use is not None:
            found = self._from_use(use, argument)
            if found is not None:
                return found
        by_name = self._from_name(argument, first)
        if by_name is not None:
            return by_name
        if argument is first:
            layer = next((m for m in self.model.modules() if m is not self.model and _layer_specs(m)), None)
            if layer is None:
                return None
            return _fixed(_layer_proposals(layer, self.model, time_major=self._time_major(layer), tables=self._tables(name),
                                           label_like=bool(_LABELS.match(role))))
        return Options(tuple(_per_sample(role, "as one value per sample (a guess)")), after=first.name,
                       derive=lambda spec: _like(first.name, spec))

    def _from_use(self, use: Use, argument: Argument) -> Options | None:
        name, role = argument.name, argument.role
        if use.role == "state":
            assert isinstance(use.module, nn.RNNBase)
            state = _state_spec(use.module)
            spec = state.items[use.item] if isinstance(state, TupleSpec) and use.item is not None else state
            return _fixed([Proposal(spec, f"as the initial state of {use.label}")])
        if use.role == "per_sample":
            return _fixed(_per_sample(role, "as a timestep (one value per sample)"))
        if use.role == "matrix":
            assert use.features is not None
            dtype = _float_dtype(self.model, None)
            specs = [InputSpec(dtype, (BATCH, use.features)), InputSpec(dtype, (BATCH, SEQUENCE, use.features))]
            return _fixed([Proposal(_undo(spec, use.steps), f"from {use.label}") for spec in specs])
        if use.role == "square":
            return Options(after=use.partner, derive=lambda spec: _square(spec, f"as an adjacency ({use.label})"))
        assert use.module is not None
        proposals = _layer_proposals(use.module, self.model, time_major=self._time_major(use.module), tables=self._tables(name),
                                     label_like=bool(_LABELS.match(role)))
        proposals = [Proposal(_undo(_split(p.spec, *use.split) if use.split else p.spec, use.steps), p.source) for p in proposals]
        return _fixed(_by_annotation([p for p in proposals if p.spec is not None], argument.annotation))

    def _from_name(self, argument: Argument, first: Argument) -> Options | None:
        name = argument.role
        if argument is first:
            return None
        if _TIMESTEPS.match(name):
            return _fixed(_per_sample(name, "as a timestep, by its name"))
        if name in STATES:
            rnn = next((m for m in self.model.modules() if isinstance(m, nn.RNNBase)), None)
            if rnn is not None:
                state = _state_spec(rnn)
                if isinstance(state, TupleSpec) and name in ("c0", "c_0"):
                    state = state.items[1]
                elif isinstance(state, TupleSpec) and name in ("h0", "h_0"):
                    state = state.items[0]
                return _fixed([Proposal(state, f"as the initial state of {layer_label(rnn)}, by its name")])
        if _ADJACENCY.match(name):
            return Options(after=first.name, derive=lambda spec: _square(spec, f"as an adjacency over the rows of `{first.name}`, by its name"))
        if name == "edge_index":
            return _fixed([Proposal(InputSpec("int64", (2, 4 * BATCH)), "as edges between the nodes, by its name")])
        if _LABELS.match(name):
            embedding = _smallest_embedding(self.model)
            source = f"as class labels below {embedding.num_embeddings}, by its name" if embedding else "as class labels, by its name"
            return _fixed([Proposal(InputSpec("int64", (BATCH,)), source)])
        return None

    def _tables(self, name: str) -> list[Table]:
        if self.forward is not None:
            return self.forward.tables(name)
        return self.tables_by_name or []

    def _time_major(self, module: nn.Module) -> bool:
        """Whether an embedding's output goes into an RNN that is not batch_first: then tokens are (sequence, batch)."""
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return False
        if self.forward is not None:
            rnn = self.forward.rnn_after(module)
        else:
            rnn = next((m for m in self.model.modules() if isinstance(m, nn.RNNBase)), None)
        return rnn is not None and not rnn.batch_first

    # --- when nothing fits ---------------------------------------------------------------------------------
    def consumer_text(self, name: str) -> str:
        if self.forward is None:
            return " (the model cannot be traced to see what uses it)"
        use = self.forward.use(name)
        return f" (first used by {use.label})" if use is not None else " (no layer consumes it directly)"


# --- proposals ---------------------------------------------------------------------------------------------------
def _fixed(proposals: list[Proposal]) -> Options | None:
    return Options(tuple(proposals)) if proposals else None


def _layer_proposals(layer: nn.Module, model: nn.Module, *, time_major: bool = False, tables: list[Table] = (),  # type: ignore[assignment]
                     label_like: bool = False) -> list[Proposal]:
    """The layer's own input shapes, sized by the tables the argument meets (`from Embedding(1000, 64) and
    pos_emb[32]`), then the conventional sizes."""
    label = layer_label(layer)
    found: list[Proposal] = []
    for spec, used in _layer_specs(layer, time_major=time_major, tables=list(tables), label_like=label_like):
        spec = _with_float_dtype(spec, _float_dtype(model, layer))
        source = f"from {label}" + (f" and {used}" if used is not None else "")
        if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)) and len(spec.shape) == 1:
            source = f"as class labels below {layer.num_embeddings}, from {label}"
        if all(p.spec != spec for p in found):
            found.append(Proposal(spec, source))
    return found


def _layer_specs(module: nn.Module | None, *, time_major: bool = False, tables: list[Table] | None = None,
                 label_like: bool = False) -> list[tuple[InputSpec, Table | None]]:
    """Candidate specs for a tensor fed straight into `module`, each with the table that sized it (or None)."""
    f32, tables = "float32", tables or []
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # a decoder or generator: it starts small and grows
        rank = len(module.kernel_size)
        return [(InputSpec(f32, (BATCH, module.in_channels, *([n] * rank))), None) for n in (1, 4, 8, 16)]
    if isinstance(module, nn.Conv1d):
        sized = [(n, t) for t in tables for n in _conv_lengths(t, module)]
        return [(InputSpec(f32, (BATCH, module.in_channels, n)), t) for n, t in [*sized, *_plain((128, 64, 256, 32))]]
    if isinstance(module, nn.Conv2d):
        sized = [(n, t) for t in tables for n in _grid_sides(t, module)]
        sizes = (28, 32, 64, 224) if module.in_channels == 1 else (224, 32, 64, 256, 28)
        return [(InputSpec(f32, (BATCH, module.in_channels, n, n)), t) for n, t in [*sized, *_plain(sizes)]]
    if isinstance(module, nn.Conv3d):
        return [(InputSpec(f32, (BATCH, module.in_channels, d, n, n)), None) for d, n in ((16, 32), (16, 64), (16, 112))]
    if isinstance(module, nn.Linear):
        flat = [(InputSpec(f32, (BATCH, module.in_features)), None)]
        return flat + [(InputSpec(f32, (BATCH, n, module.in_features)), t) for n, t in _sequence_lengths(tables, (SEQUENCE,))]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        lengths = _sequence_lengths(tables, (SEQUENCE, 128))
        tokens = [(InputSpec("int64", (n, BATCH) if time_major else (BATCH, n)), t) for n, t in lengths]
        labels = [(InputSpec("int64", (BATCH,)), None)]
        return labels + tokens if label_like else tokens + labels
    if isinstance(module, nn.RNNBase):
        return [(InputSpec(f32, (BATCH, n, module.input_size) if module.batch_first else (n, BATCH, module.input_size)), t)
                for n, t in _sequence_lengths(tables, (SEQUENCE,))]
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        width, first = module.self_attn.embed_dim, module.self_attn.batch_first
        return [(InputSpec(f32, (BATCH, n, width) if first else (n, BATCH, width)), t) for n, t in _sequence_lengths(tables, (SEQUENCE,))]
    if isinstance(module, nn.TransformerEncoder):
        return _layer_specs(module.layers[0], tables=tables)
    if isinstance(module, nn.MultiheadAttention):
        width = module.embed_dim
        return [(InputSpec(f32, (BATCH, n, width) if module.batch_first else (n, BATCH, width)), t) for n, t in _sequence_lengths(tables, (SEQUENCE,))]
    if isinstance(module, nn.LayerNorm):
        return [(InputSpec(f32, (BATCH, SEQUENCE, *module.normalized_shape)), None), (InputSpec(f32, (BATCH, *module.normalized_shape)), None)]
    if isinstance(module, nn.BatchNorm1d):
        return [(InputSpec(f32, (BATCH, module.num_features)), None), (InputSpec(f32, (BATCH, module.num_features, SEQUENCE)), None)]
    if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return [(InputSpec(f32, (BATCH, module.num_features, n, n)), None) for n in (32, 64, 224)]
    if isinstance(module, nn.GroupNorm):
        return [(InputSpec(f32, (BATCH, module.num_channels, n, n)), None) for n in (32, 64, 224)]
    return []


def _plain(sizes: tuple[int, ...]) -> list[tuple[int, None]]:
    return [(n, None) for n in sizes]


def _sequence_lengths(tables: list[Table], defaults: tuple[int, ...]) -> list[tuple[int, Table | None]]:
    """Token counts a sequence model takes: the length a table fixes (and one fewer, for a class token
    prepended before the add), then a short one up to the rows of a sliced table and its rows; else `defaults`."""
    tokens = [t for t in tables if t.stride in (1, None)]
    fixed = sorted((t for t in tokens if not t.sliced), key=lambda t: t.rows)[:1]
    bounded = sorted((t for t in tokens if t.sliced), key=lambda t: t.rows)[:1]
    lengths = [(n, t) for t in fixed for n in (t.rows, t.rows - 1)] + [(n, t) for t in bounded for n in (min(SEQUENCE, t.rows), t.rows)]
    unique = list(dict.fromkeys((n, t) for n, t in lengths if n > 0))
    return unique or [(n, None) for n in defaults]


def _conv_lengths(table: Table, conv: nn.Conv1d) -> list[int]:
    """The signal length a table of `rows` positions after the convolutions' downsampling needs (Whisper's mel
    frames: 1500 positions after a stride of 2, so 3000). The stride is known from a trace, else 1, 2 or 4."""
    return [table.rows * s for s in ((table.stride,) if table.stride is not None else (1, 2, 4))]


def _grid_sides(table: Table, conv: nn.Conv2d) -> list[int]:
    """Image sides whose patch grid fills a table of `rows` positions (with up to two class/distillation tokens
    prepended): side = sqrt(rows - k) * stride."""
    stride = table.stride if table.stride is not None else conv.stride[0]
    sides = []
    for extra in (0, 1, 2):
        root = math.isqrt(max(table.rows - extra, 0))
        if root > 1 and root * root == table.rows - extra:
            sides.append(root * stride)
    return sides


def _per_sample(name: str, source: str) -> list[Proposal]:
    """One value per sample: a diffusion timestep as integers (DDPM) or floats (a noise level)."""
    specs = [InputSpec("int64", (BATCH,)), InputSpec("float32", (BATCH,))]
    if _FLOAT_TIMES.match(name):
        specs.reverse()
    return [Proposal(spec, source) for spec in specs]


def _like(first: str, spec: Spec | None) -> list[Proposal]:
    return [Proposal(spec, f"like `{first}` (a guess)")] if spec is not None else []


def _square(partner: Spec | None, source: str) -> list[Proposal]:
    """An adjacency over the partner's rows: (N, N) for nodes (N, F), (B, N, N) for a batch of graphs."""
    if not isinstance(partner, InputSpec) or len(partner.shape) < 2:
        return []
    if len(partner.shape) == 2:
        nodes = partner.shape[0]
        return [Proposal(InputSpec("float32", (nodes, nodes)), source)]
    batch, nodes = partner.shape[:2]
    return [Proposal(InputSpec("float32", (batch, nodes, nodes)), source)]


def _mask_proposals(name: str, partner_name: str, partner: Spec | None) -> list[Proposal]:
    """A mask over the first argument's positions: (B, L) for tokens or features, then the shapes attention
    code broadcasts; (B, 1, H, W) for an image. Bool first (`masked_fill` needs it), then float."""
    if not isinstance(partner, InputSpec) or len(partner.shape) < 2:
        return [Proposal(InputSpec("bool", (BATCH,)), "as a mask, by its name")]
    if len(partner.shape) == 4:
        batch, _, height, width = partner.shape
        shapes = [(batch, 1, height, width), (batch, height, width)]
    else:
        batch, length = partner.shape[:2]
        shapes = [(batch, length), (batch, 1, length), (batch, 1, 1, length), (batch, length, length), (batch, 1, length, length), (length, length)]
    dtypes = ("int64", "bool", "float32") if name == "attention_mask" else ("bool", "float32")
    if _PADDING_MASKS.search(name):
        shapes = shapes[:1]
    return [Proposal(InputSpec(dtype, shape), f"as a mask over the positions of `{partner_name}`, by its name") for shape in shapes for dtype in dtypes]


def _state_spec(rnn: nn.RNNBase) -> Spec:
    """`h0` of shape (layers * directions, batch, hidden), and for an LSTM the pair `(h0, c0)`."""
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    hidden = InputSpec("float32", (layers, BATCH, getattr(rnn, "proj_size", 0) or rnn.hidden_size))
    if isinstance(rnn, nn.LSTM):
        return TupleSpec((hidden, InputSpec("float32", (layers, BATCH, rnn.hidden_size))))
    return hidden


def _split(spec: Spec | None, dim: int, parts: int, taken: int) -> Spec | None:
    """An argument's share of a concatenation the consumer takes whole: what other operands do not take, split
    evenly between the arguments."""
    if not isinstance(spec, InputSpec) or not -len(spec.shape) <= dim < len(spec.shape):
        return spec
    left = spec.shape[dim] - taken
    if left <= 0 or left % parts:
        return spec
    shape = list(spec.shape)
    shape[dim] = left // parts
    return InputSpec(spec.dtype, tuple(shape))


def _undo(spec: Spec | None, steps: tuple[tuple[Any, ...], ...]) -> Spec | None:
    """The argument's shape before the transposes, permutes and unsqueezes between it and the consumer."""
    if not isinstance(spec, InputSpec):
        return spec
    shape = list(spec.shape)
    for step in reversed(steps):
        rank = len(shape)
        if step[0] == "transpose":
            a, b = (d % rank for d in step[1:])
            shape[a], shape[b] = shape[b], shape[a]
        elif step[0] == "permute" and len(step[1]) == rank:
            before = [0] * rank
            for position, source in enumerate(step[1]):
                before[source % rank] = shape[position]
            shape = before
        elif step[0] == "unsqueeze" and -rank <= step[1] < rank and shape[step[1] % rank] == 1:
            del shape[step[1] % rank]
        else:
            return spec
    return InputSpec(spec.dtype, tuple(shape))


def _by_annotation(proposals: list[Proposal], annotation: Any) -> list[Proposal]:
    """Proposals of the annotated kind first (`x: torch.LongTensor`, `mask: torch.BoolTensor`)."""
    wanted = {torch.LongTensor: "int64", torch.BoolTensor: "bool", torch.FloatTensor: "float32"}.get(annotation)
    if wanted is None:
        return proposals
    return sorted(proposals, key=lambda p: not (isinstance(p.spec, InputSpec) and p.spec.dtype == wanted))


def _float_dtype(model: nn.Module, layer: nn.Module | None) -> str:
    """The dtype float inputs take: the consuming layer's weights' (a half-precision model gets half inputs)."""
    for owner in (layer, model):
        if owner is None:
            continue
        tensor = next((t for t in owner.parameters() if t.is_floating_point()), None)
        if tensor is not None:
            return str(tensor.dtype).removeprefix("torch.")
    return "float32"


def _with_float_dtype(spec: InputSpec, dtype: str) -> InputSpec:
    return InputSpec(dtype, spec.shape) if spec.dtype == "float32" and dtype != "float32" else spec


def _smallest_embedding(model: nn.Module) -> nn.Embedding | None:
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return min(embeddings, key=lambda m: m.num_embeddings) if embeddings else None


def _named_tables(model: nn.Module) -> list[Table]:
    """Without a trace: parameters, buffers and Embeddings named like position tables (`pos_embed`,
    `positional_embedding`, `wpe`). Whether they are sliced, and the stride before them, are unknown."""
    found = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if _POSITION_TABLES.search(name) and tensor.dim() >= 2 and tensor.shape[-2] > 1:
            found += [Table(name, int(tensor.shape[-2]), sliced, None) for sliced in (False, True)]
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and _POSITION_TABLES.search(name):
            found.append(Table(name, module.num_embeddings, True, None))
    return found


def _combinations(names: tuple[str, ...], options: dict[str, Options]) -> list[dict[str, Proposal]]:
    """Every argument's proposals combined, fewest departures from the first proposals first (by the sum of
    the proposals' ranks), at most MAX_CANDIDATES. Arguments whose proposals depend on others' (a mask, an
    adjacency) are chosen after them."""
    dependent = [n for n in names if options[n].derive is not None]
    order = [n for n in names if n not in dependent] + dependent
    found: list[dict[str, Proposal]] = []

    def spend(position: int, chosen: dict[str, Proposal], departures: int) -> None:
        if len(found) >= MAX_CANDIDATES:
            return
        if position == len(order):
            if departures == 0:
                found.append(dict(chosen))
            return
        name = order[position]
        proposals = options[name].proposals({k: v.spec for k, v in chosen.items()})
        for rank in range(min(departures, len(proposals) - 1) + 1):
            chosen[name] = proposals[rank]
            spend(position + 1, chosen, departures - rank)
            del chosen[name]

    for total in range(MAX_CANDIDATES):
        before = len(found)
        spend(0, {}, total)
        if len(found) == before or len(found) >= MAX_CANDIDATES:
            break
    return found
