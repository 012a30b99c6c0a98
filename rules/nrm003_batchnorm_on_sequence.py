from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import INPUT, AuditGraph, Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import attention_nodes, block_of, inside

# Producers of per-token features: what a transformer's LayerNorm normally normalizes.
_TOKENWISE = frozenset({ops.EMBEDDING, ops.ATTENTION, ops.LINEAR, ops.RNN, ops.MATMUL, ops.LAYER_NORM, ops.RMS_NORM})
_LOOK_THROUGH = ops.TRANSPARENT | ops.ACTIVATIONS | {ops.DROPOUT}


@register
class BatchNormOnSequence(Rule):
    """
    ## What it does
    Flags a BatchNorm that normalizes token features: the per-token output of an Embedding, an attention
    layer, an RNN, or a Linear applied to every token (or a residual sum they are added to), in a model that
    works on token sequences (it embeds token ids, or has attention over non-image inputs). BatchNorm after
    a convolution over a sequence (a conv block, as in Conformer) is not flagged, nor BatchNorm over the
    patch tokens of an image model (fixed length, no padding: LeViT's deliberate design).

    ## Why is this bad?
    BatchNorm computes its statistics across the batch: over [batch, sequence, features] data it averages each
    feature over every sentence and position in the batch. Sequences have variable length and are padded, so
    padding positions pollute the statistics; the statistics depend on what else is in the batch; and the
    running estimates used at evaluation are unreliable for small or unevenly long batches. LayerNorm
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
    summary = "BatchNorm over token/sequence features (after an Embedding, in attention blocks)"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        norms = ctx.graph.find(ops.BATCH_NORM)
        if not norms:
            return
        tokens = _token_data(ctx.graph)
        images = _image_data(ctx.graph)
        attention = attention_nodes(ctx.graph)
        for norm in norms:
            if not norm.tensor_inputs:
                continue
            producer = _token_producer(ctx.graph, norm.tensor_inputs[0])
            if producer is None:
                continue
            if id(norm) in tokens:
                where = "of a token sequence"
            elif id(norm) not in images and any(inside(a.module, block_of(norm)) for a in attention):
                where = "in an attention block"
            else:
                continue
            yield self.finding(
                f"{norm.label()} normalizes per-token features {where} (from {_source(ctx.graph, producer)}) "
                "across the batch "
                "and positions; use LayerNorm over the feature (last) dim",
                at=norm,
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
    marked: set[int] = set()
    for n in graph.nodes:
        if n.op == ops.EMBEDDING or (n.kind == INPUT and n.dtype is not None and "int" in n.dtype):
            marked.add(id(n))
        elif any(id(i) in marked for i in n.tensor_inputs):
            marked.add(id(n))
    return marked


def _image_data(graph: AuditGraph) -> set[int]:
    """Nodes computed from an image-like input (rank 4 or more): patch tokens of a vision model have a fixed
    length and no padding, and BatchNorm over them is a deliberate design (LeViT)."""
    marked: set[int] = set()
    for n in graph.nodes:
        if n.kind == INPUT and n.shape is not None and len(n.shape) >= 4:
            marked.add(id(n))
        elif any(id(i) in marked for i in n.tensor_inputs):
            marked.add(id(n))
    return marked
