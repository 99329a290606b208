"""Cutting an ONNX graph down to the outputs a config serves, so only those are computed.

ONNX Runtime runs every node of a graph whatever outputs a run asks for: it neither skips the nodes
that feed only unrequested outputs nor drops them at load, even when they are no graph output any
more (checked with onnxruntime 1.20: a failing node on a dead branch still fails the run). A config
that lists a subset of the model's outputs, or a model whose non-tensor outputs (skl2onnx's ZipMap)
are left out, would pay for what nobody reads. :func:`pruned_model` returns the model without those
nodes, made with the ``onnx`` package's protobuf classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("pyserve.backends.onnx")


def _names_used_by(graph) -> set[str]:  # type: ignore[no-untyped-def]
    """Every value name a graph's nodes read, subgraphs (If, Loop, Scan bodies) included: a subgraph
    may read names of the outer graph."""
    import onnx

    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _names_used_by(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    used |= _names_used_by(g)
    return used


def pruned_model(path: Path, outputs: Iterable[str]) -> tuple[bytes, int, int] | None:
    """The model at ``path`` with only the graph outputs ``outputs`` and the nodes they need, as
    serialized ONNX, with the node counts before and after; None when nothing would be cut, or when
    the model cannot be cut safely here (weights in external data files, which a model given as
    bytes could not find; the ``onnx`` package missing). Never raises for a model onnxruntime loads:
    anything unexpected gives None and the whole model is run.

    Nodes are kept walking the graph backwards from ``outputs`` (ONNX graphs are topologically
    sorted): a node is kept when one of its outputs is needed, and then everything it reads, in
    subgraphs too, is needed. Graph inputs are all kept, so requests do not change."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return None
    wanted = set(outputs)
    try:
        model = onnx.load(str(path), load_external_data=False)
        graph = model.graph
        if any(uses_external_data(t) for t in graph.initializer):
            return None
        if {o.name for o in graph.output} <= wanted:
            return None  # every output is served: nothing to cut
        needed = set(wanted)
        keep = []
        for node in reversed(graph.node):
            if needed.intersection(node.output):
                keep.append(node)
                needed.update(node.input)
                needed |= _names_used_by(onnx.GraphProto(node=[node]))  # what its subgraphs read
        before = len(graph.node)
        kept_outputs = [o for o in graph.output if o.name in wanted]
        del graph.output[:]
        graph.output.extend(kept_outputs)
        del graph.node[:]
        graph.node.extend(reversed(keep))
        kept_inits = [t for t in graph.initializer if t.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
        produced = {name for node in keep for name in node.output}
        kept_info = [v for v in graph.value_info if v.name in produced]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
        return model.SerializeToString(), before, len(keep)
    except Exception:  # a model ORT loads but onnx cannot read or write: run it whole
        log.debug("%s: could not cut the graph down to its served outputs", path, exc_info=True)
        return None
