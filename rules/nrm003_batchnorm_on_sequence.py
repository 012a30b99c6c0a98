from __future__ import annotations

from typing import Callable, Iterator

from auditor.findings import Finding, Severity
from auditor.graph import INPUT, AuditGraph, Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import attention_nodes, block_of, inside, shape_text

# Producers of per-token features: what a transformer's LayerNorm normally normalizes.
_TOKENWISE = frozenset({ops.EMBEDDING, ops.ATTENTION, ops.LINEAR, ops.RNN, ops.MATMUL, ops.LAYER_NORM, ops.RMS_NORM})
_LOOK_THROUGH = ops.TRANSPARENT | ops.ACTIVATIONS | {ops.DROPOUT}
# Ops that treat each time step of a [batch, time, features] tensor on its own and keep that layout.
_KEEPS_LAYOUT = ops.ACTIVATIONS | {ops.DROPOUT, ops.LINEAR, ops.IDENTITY, "contiguous", "clone", "to", "type_as"}


@register
class BatchNormOnSequence(Rule):
    """
    ## What it does
    Flags a BatchNorm that normalizes token features: the per-token output of an Embedding, an attention
    layer, an RNN, or a Linear applied to every token (or a residual sum they are added to), in a model that
    works on token sequences (it embeds token ids, or has attention over non-image inputs). The output of a
    recurrent layer (RNN, LSTM, GRU) or an attention layer is such a sequence whatever the input, and any
    layout counts: the transposes, reshapes, activations and dropout on the way to the norm are looked
    through. A `BatchNorm1d(seq_len)` applied to batch-first [batch, time, features] data is reported as what it
    is, a norm per time step: on a recurrent or attention layer's output (also after a Linear or an activation
    applied to every step), or on what such a layer reads (the raw input of a sequence model). BatchNorm after a convolution over a sequence (a conv block, as in Conformer) is not
    flagged, nor BatchNorm over the patch tokens of an image model (fixed length, no padding: LeViT's
    deliberate design).

    ## Why is this bad?
    BatchNorm computes its statistics across the batch: over [batch, sequence, features] data it averages each
    feature over every sentence and position in the batch. Sequences have variable length and are padded, so
    padding positions pollute the statistics; the statistics depend on what else is in the batch; and the
    running estimates used at evaluation are unreliable for small or unevenly long batches. A norm whose
    channels are the time steps is worse still: each position gets its own statistics, so the model is tied
    to one sequence length and treats the same content differently by where it occurs. LayerNorm
    normalizes each token over its own features, independently of the batch and of the sequence length,
    which is why it is the norm of transformers and recurrent sequence models.

    ## Example
    ```python
    x = self.embed(tokens)                                 # [B, T, D]
    x = self.norm(x.transpose(1, 2)).transpose(1, 2)       # self.norm = nn.BatchNorm1d(D)
    ```

    ## Use instead
    ```python
    x = self.norm(self.embed(tokens))                      # self.norm = nn.LayerNorm(D)
    ```

    ## Fix
    Replace the BatchNorm with `nn.LayerNorm(features)` applied on the last dim (drop the transposes that
    put features on dim 1 for BatchNorm1d). No automatic fix: the module's parameters and its placement change.

    ## References
    Ba, Kiros, Hinton, "Layer Normalization", 2016; Shen et al., "PowerNorm: Rethinking Batch Normalization in
    Transformers", ICML 2020 (why BatchNorm underperforms on NLP data).
    """

    code = "NRM003"
    name = "batchnorm-on-sequence"
    severity = Severity.WARNING
    summary = "BatchNorm over token/sequence features (after an Embedding, an RNN or attention)"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        graph = ctx.graph
        norms = graph.find(ops.BATCH_NORM)
        if not norms:
            return
        tokens = _token_data(graph)
        images = _image_data(graph)
        attention = attention_nodes(graph)
        for norm in norms:
            if not norm.tensor_inputs:
                continue
            timed = _time_axis_layer(graph, norm)
            if timed is not None:
                yield self.finding(_per_position_message(norm, *timed), at=norm)
                continue
            producer = _token_producer(graph, norm.tensor_inputs[0])
            if producer is None:
                continue
            sequence_layer = _sequence_layer(graph, producer, attention)
            if id(norm) in tokens:
                where = "of a token sequence"
            elif sequence_layer == "recurrent" or (sequence_layer == "attention" and id(norm) not in images):
                where = f"of {'an' if sequence_layer == 'attention' else 'a'} {sequence_layer} layer"
            elif id(norm) not in images and any(inside(a.module, block_of(norm)) for a in attention):
                where = "in an attention block"
            else:
                continue
            yield self.finding(_message(norm, producer, where, _source(graph, producer)), at=norm)


def _sequence_layer(graph: AuditGraph, producer: Node, attention: list[Node]) -> str | None:
    """"recurrent" or "attention" when the features come straight out of such a layer (any layout), else None."""
    if producer.op == ops.RNN:
        return "recurrent"
    if producer.op == ops.ATTENTION:
        return "attention"
    if producer.op == ops.MATMUL:  # softmax(q @ k.T) @ v written by hand
        weights = graph.predecessors(producer, through=ops.TRANSPARENT | {ops.DROPOUT})
        if any(w is a for w in weights for a in attention):
            return "attention"
    return None


def _time_axis_layer(graph: AuditGraph, norm: Node) -> tuple[Node, str] | None:
    """The recurrent or attention layer (batch-first) that reads or produced the norm's dim 1 as its time axis, and
    "output" or "input": `BatchNorm1d(seq_len)` over a [batch, time, features] tensor, straight or through
    layers that keep the layout (Linear on the features, activations, dropout)."""
    given = norm.tensor_inputs[0].shape
    if given is None or len(given) != 3 or norm.shape != given:
        return None
    for node in _layout_kept(norm.tensor_inputs[0], lambda n: n.tensor_inputs[:1]):
        if _batch_first_sequence(node) and node.shape is not None and node.shape[1] == given[1]:
            return node, "output"
    for node in _layout_kept(norm, lambda n: n.users):
        if node is not norm and _batch_first_sequence(node) and _reads_time_axis(node, given[1]):
            return node, "input"
    return None


def _layout_kept(start: Node, step: object) -> list[Node]:
    """`start` and the nodes reached from it through ops that keep a [batch, time, features] layout (each time
    step on its own: a Linear, an activation, dropout, a cast; the tuple an RNN returns), up to the first
    sequence layer on each path."""
    found: list[Node] = []
    stack, seen = [start], set()
    while stack and len(seen) < 64:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        if node is not start and _batch_first_sequence(node):
            continue
        if node.op in _KEEPS_LAYOUT or (node.op == ops.GETITEM and _unpacks(node)) or node is start:
            stack.extend(step(node))  # type: ignore[operator]
    return found


def _unpacks(node: Node) -> bool:
    """A getitem that takes one output of a layer returning a tuple (`out, h = self.lstm(x)`)."""
    sources = node.tensor_inputs
    return len(sources) == 1 and sources[0].op in (ops.RNN, ops.ATTENTION) and node.shape == sources[0].shape


def _batch_first_sequence(node: Node) -> bool:
    return node.is_module and node.op in (ops.RNN, ops.ATTENTION) and node.attrs.get("batch_first") is True


def _reads_time_axis(layer: Node, length: int) -> bool:
    given = layer.tensor_inputs[0].shape if layer.tensor_inputs else None
    return given is not None and len(given) == 3 and given[1] == length


def _per_position_message(norm: Node, layer: Node, side: str) -> str:
    channels = norm.tensor_inputs[0].shape[1]  # type: ignore[index]
    features = norm.tensor_inputs[0].shape[-1]  # type: ignore[index]
    relation = f"the output of {layer.label()}" if side == "output" else f"what {layer.label()} reads"
    return (
        f"{norm.label()} normalizes each of the {channels} time steps of {relation} "
        f"{shape_text(norm.tensor_inputs[0].shape)} (batch first: its channels are dim 1, the sequence) across the batch "
        f"and the features: a per-position norm tied to one sequence length; use LayerNorm({features}) over the "
        "feature (last) dim"
    )


def _message(norm: Node, producer: Node, where: str, source: str) -> str:
    """What the norm's channels are: the features (after a transpose, or with the positions flattened into the
    batch), or the positions themselves (`BatchNorm1d(seq_len)` on a [batch, time, hidden] output)."""
    given = norm.tensor_inputs[0].shape or ()
    shape = producer.shape or ()
    channels = given[1] if len(given) > 1 else None
    if channels is not None and shape and channels != shape[-1] and channels in shape[:-1]:
        return (
            f"{norm.label()} normalizes each of the {channels} positions of {source} {shape_text(shape)} across the "
            f"batch and the features (its channels are dim {shape.index(channels)}, the sequence): a per-position "
            f"norm tied to one sequence length; use LayerNorm({shape[-1]}) over the feature (last) dim"
        )
    return (
        f"{norm.label()} normalizes per-token features {where} (from {source}) across the batch and positions; "
        "use LayerNorm over the feature (last) dim"
    )


def _token_producer(graph: AuditGraph, start: Node) -> Node | None:
    """The node that produced per-token features [batch, tokens, features] feeding `start`, if that is what it is."""
    candidates = graph.predecessors(start, through=_LOOK_THROUGH) if start.op in _LOOK_THROUGH else [start]
    for node in candidates:
        if _is_tokenwise(graph, node, depth=3):
            return node
    return None


def _source(graph: AuditGraph, producer: Node) -> str:
    if producer.op == ops.ADD:
        operands = [o for o in graph.predecessors(producer, through=_LOOK_THROUGH) if _is_tokenwise(graph, o, 2)]
        if operands:
            return f"the residual sum with {operands[-1].label()}"
    return producer.label()


def _is_tokenwise(graph: AuditGraph, node: Node, depth: int) -> bool:
    if node.shape is None or len(node.shape) < 3:
        return False
    if node.op in _TOKENWISE:
        return True
    if node.op == ops.ADD and depth > 0:  # a residual stream that per-token updates are added to
        return any(_is_tokenwise(graph, o, depth - 1) for o in graph.predecessors(node, through=_LOOK_THROUGH))
    return False


def _token_data(graph: AuditGraph) -> set[int]:
    """Nodes computed from token ids: downstream of an Embedding or of an integer model input."""
    return _downstream(graph, lambda n: n.op == ops.EMBEDDING or (n.kind == INPUT and n.dtype is not None and "int" in n.dtype))


def _image_data(graph: AuditGraph) -> set[int]:
    """Nodes computed from an image-like input (rank 4 or more): patch tokens of a vision model have a fixed
    length and no padding, and BatchNorm over them is a deliberate design (LeViT)."""
    return _downstream(graph, lambda n: n.kind == INPUT and n.shape is not None and len(n.shape) >= 4)


def _downstream(graph: AuditGraph, source: Callable[[Node], bool]) -> set[int]:
    """The ids of the nodes `source` picks and of every node computed from one (the graph's order is its
    dataflow's)."""
    marked: set[int] = set()
    for n in graph.nodes:
        if source(n) or any(id(i) in marked for i in n.tensor_inputs):
            marked.add(id(n))
    return marked
