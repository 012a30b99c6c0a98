"""The graph API rules are written against: `AuditGraph`, `Node` and the op vocabulary `ops`."""

from auditor.graph import ops
from auditor.graph.model import CALL, INPUT, MODULE, OUTPUT, PARAM, AuditGraph, Node

__all__ = ["AuditGraph", "Node", "ops", "INPUT", "MODULE", "CALL", "PARAM", "OUTPUT"]
