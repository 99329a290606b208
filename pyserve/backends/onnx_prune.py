"""Cutting an ONNX graph down to the outputs a config serves, so only those are computed.

ONNX Runtime runs every node of a graph whatever outputs a run asks for: it neither skips the nodes
that feed only unrequested outputs nor drops them at load, even when they are no graph output any
more (checked with onnxruntime 1.20: a failing node on a dead branch still fails the run). A config
that lists a subset of the model's outputs, or a model whose non-tensor outputs (skl2onnx's ZipMap)
are left out, would pay for what nobody reads. :func:`pruned_model` returns the model without those
nodes, made with the ``onnx`` package's protobuf classes.

Models whose weights live in external data files (``torch.onnx.export`` writes ``model.onnx`` and
``model.onnx.data``) are cut too: the graph is read without its weights, and onnxruntime is told the
folder the data files are relative to (session config entry
``session.model_external_initializers_file_folder_path``, :data:`EXTERNAL_FOLDER_ENTRY`); nothing is
written anywhere. :func:`missing_external_data` says which data file a graph refers to that is not
there, for a load that onnxruntime refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("pyserve.backends.onnx")

# The session config entry that gives onnxruntime the folder external data paths are relative to,
# for a model given as bytes (checked with onnxruntime 1.32).
EXTERNAL_FOLDER_ENTRY = "session.model_external_initializers_file_folder_path"


class Pruned(NamedTuple):
    """A cut model: its serialized ONNX, the node counts before and after, and whether its weights are
    in external data files (then the session needs :data:`EXTERNAL_FOLDER_ENTRY` set to the folder of
    the model file)."""

    model: bytes
    nodes_before: int
    nodes_after: int
    external_data: bool


def external_data_files(path: Path) -> dict[str, list[str]]:
    """The external data files the ONNX graph at ``path`` refers to, as the ``location`` it records
    (relative to the graph's folder) -> the names of the tensors stored there (initializers, and
    tensors in node attributes and subgraphs). Reads the graph only, not the weights. Raises what
    ``onnx.load`` raises (ImportError without the ``onnx`` package)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    files: dict[str, list[str]] = {}
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            files.setdefault(location, []).append(tensor.name)
    return files


def missing_external_data(path: Path) -> str | None:
    """Why the ONNX graph at ``path`` cannot be loaded for want of its external data: a sentence that
    names each data file it refers to that is not a file beside it (where it was looked for, and for
    which tensors), and how to fix it; None when every data file it refers to is there, or when the
    graph cannot be read here (then onnxruntime's own message is all there is)."""
    try:
        files = external_data_files(path)
    except Exception:  # not readable by onnx (or onnx missing): nothing to add to ORT's message
        return None
    folder = Path(path).parent
    missing = []
    for location, tensors in files.items():
        where = folder / location
        if not where.is_file():
            some = ", ".join(repr(t) for t in tensors[:3]) + (f" and {len(tensors) - 3} more"
                                                               if len(tensors) > 3 else "")
            missing.append(f"external data file {location!r} ({where}), where the graph stores the "
                           f"weights {some}, does not exist")
    if not missing:
        return None
    return ("; ".join(missing) + f". The graph {Path(path).name} records each data file's name relative to "
            "its own folder: keep the data file beside the graph under the name the exporter gave it "
            "(the graph file may be renamed, the data file may not), or, to give it another name, load "
            "the model with its data file in place and re-save it with onnx.save_model(model, new_path, "
            "save_as_external_data=True, location=new_data_name)")


def escaping_external_data(path: Path) -> str | None:
    """Why the ONNX graph at ``path`` must not be loaded because an external data ``location`` it
    records leaves its folder: an absolute path, a ``..`` that climbs out, or a data file that is a
    symlink to a file elsewhere. None when every data file lies in the graph's folder (or in the
    folder of the file a symlinked graph points to, as Hugging Face caches lay models out), or when
    the graph cannot be read here (onnxruntime then answers for it).

    onnxruntime 1.24 and newer refuse such paths themselves; older ones (pyserve accepts 1.17 and
    up) read whatever file the graph names, so a model file could make the server read any file it
    can open into a model's weights. With those, pyserve checks before any session is made."""
    try:
        files = external_data_files(path)
    except Exception:  # not readable by onnx: onnxruntime's own message is all there is
        return None
    path = Path(path)
    folders = {path.parent.resolve(), path.resolve().parent}
    bad = []
    for location in files:
        if not location or Path(location).is_absolute():
            bad.append(f"external data location {location!r} is not a path relative to the graph's folder")
            continue
        target = (path.parent / location).resolve()
        if not any(target.is_relative_to(f) for f in folders):
            bad.append(f"external data location {location!r} resolves to {target}, outside the graph's "
                       f"folder {path.parent}")
    if not bad:
        return None
    return "; ".join(bad) + (". Keep the data files in the graph's folder (no '..', no absolute path, no "
                             "symlink to a file elsewhere)")


def _reads(node) -> set[str]:  # type: ignore[no-untyped-def]
    """Every value name a node reads: its inputs, and what the nodes of its subgraphs (If, Loop, Scan
    bodies) read, since a subgraph may read names of the outer graph."""
    import onnx

    names = set(node.input)
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subgraphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subgraphs = list(attr.graphs)
        else:
            continue
        for graph in subgraphs:
            for inner in graph.node:
                names |= _reads(inner)
    return names


def pruned_model(path: Path, outputs: Iterable[str]) -> Pruned | None:
    """The model at ``path`` with only the graph outputs ``outputs`` and the nodes they need, as
    serialized ONNX (see :class:`Pruned`); None when nothing would be cut, or when the model cannot
    be cut here (the ``onnx`` package missing). Weights in external data files stay there: the graph
    is read without them and the result refers to the same files (load it with
    :data:`EXTERNAL_FOLDER_ENTRY` set to ``path``'s folder). Never raises for a model onnxruntime
    loads: anything unexpected gives None and the whole model is run.

    Nodes are kept walking the graph backwards from ``outputs`` (ONNX graphs are topologically
    sorted): a node is kept when one of its outputs is needed, and then everything it reads, in
    subgraphs too, is needed. Graph inputs are all kept, so requests do not change."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:
        return None
    wanted = set(outputs)
    try:
        model = onnx.load(str(path), load_external_data=False)
        graph = model.graph
        external = any(uses_external_data(t) for t in _get_all_tensors(model))
        if {o.name for o in graph.output} <= wanted:
            return None  # every output is served: nothing to cut
        needed = set(wanted)
        keep = []
        for node in reversed(graph.node):
            if needed.intersection(node.output):
                keep.append(node)
                needed |= _reads(node)
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
        return Pruned(model.SerializeToString(), before, len(keep), external)
    except Exception:  # a model ORT loads but onnx cannot read or write: run it whole
        log.debug("%s: could not cut the graph down to its served outputs", path, exc_info=True)
        return None
