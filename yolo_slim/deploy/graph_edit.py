"""Graph edits around INT8 quantization, all found from the graph structure, never from names.

* ``decode_tail``: the nodes between the last Conv of each head and the graph outputs -- the
  box decode (sigmoid, exp, the grid add, the pixel-scale multiplies, the concat of pixel
  coordinates with 0-1 scores) or, for ``--raw`` exports, the reshape/transpose of the head map.
  They stay in float: one 8-bit scale cannot hold both 0..640 px and 0..1 scores, and exp()
  turns a quantization step of the logit into a percentage error of the box size.
* ``edge_pad_maxpools``: darknet pads [maxpool] with -inf, which the export writes as a constant
  -inf Pad before MaxPool. Calibration sees min = -inf and every scale downstream becomes inf.
  Replicate (edge) padding gives the same max -- every window that touches the border also holds
  the border value it replicates -- and stays finite.
* ``float_head_outputs``: drop the QuantizeLinear/DequantizeLinear pair the quantizer puts on a
  head conv's output, so the conv (int8 weights and input) hands float logits to the float tail.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops that only read the shape of an input: walking back through them would mark the body's
# layers as "tail" although no value flows from them into the outputs
SHAPE_ONLY = {"Shape", "Size"}


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (nodes_to_exclude selects by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for k, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{k}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def decode_tail(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(tail nodes, head convs): walk back from every graph output and stop at Conv nodes; the
    nodes passed on the way are the tail, the Convs where the walk stopped are the heads. An
    output with no Conv behind it is an error (nothing would be left to quantize)."""
    graph, prod = model.graph, producers(model.graph)
    tail: dict[str, None] = {}
    heads: dict[str, None] = {}
    for out in graph.output:
        found, stack, seen = False, [out.name], set()
        while stack:
            n = prod.get(stack.pop())
            if n is None or n.name in seen:
                continue  # a graph input, an initializer, or a node already walked
            seen.add(n.name)
            if n.op_type == "Conv":
                heads[n.name], found = None, True
                continue
            tail[n.name] = None
            if n.op_type not in SHAPE_ONLY:
                stack += [i for i in n.input if i]
        if not found:
            raise ValueError(f"no Conv feeds the output {out.name!r}: not a detector graph")
    return list(tail), list(heads)


def _constant_value(graph: onnx.GraphProto, name: str, prod: dict) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    n = prod.get(name)
    if n is not None and n.op_type == "Constant":
        for a in n.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def edge_pad_maxpools(model: onnx.ModelProto) -> int:
    """Pad(constant, -inf) read only by MaxPool -> Pad(edge); returns how many were changed."""
    graph, prod, cons = model.graph, producers(model.graph), consumers(model.graph)
    changed = 0
    for n in graph.node:
        if n.op_type != "Pad" or len(n.input) < 3 or not n.input[2]:
            continue
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        value = _constant_value(graph, n.input[2], prod)
        users = cons.get(n.output[0], [])
        if (mode != "constant" or value is None or value.size != 1 or not np.isneginf(value).all()
                or not users or any(u.op_type != "MaxPool" for u in users)):
            continue
        kept = [a for a in n.attribute if a.name != "mode"]
        del n.attribute[:]
        n.attribute.extend(kept + [helper.make_attribute("mode", "edge")])
        del n.input[2:]  # edge mode takes no constant_value
        changed += 1
    return changed


def float_head_outputs(model: onnx.ModelProto, heads: list[str]) -> int:
    """Remove QuantizeLinear -> DequantizeLinear on the outputs of the head convs: readers of
    the DequantizeLinear read the conv's float output instead. Returns pairs removed."""
    graph = model.graph
    cons = consumers(graph)
    drop, removed = set(), 0
    for n in graph.node:
        if n.name not in heads:
            continue
        t = n.output[0]
        for q in cons.get(t, []):
            if q.op_type != "QuantizeLinear":
                continue
            dqs = cons.get(q.output[0], [])
            outs = {o.name for o in graph.output}
            if (not dqs or any(d.op_type != "DequantizeLinear" for d in dqs)
                    or any(d.output[0] in outs for d in dqs)):
                continue
            for d in dqs:
                for user in cons.get(d.output[0], []):
                    for k, i in enumerate(user.input):
                        if i == d.output[0]:
                            user.input[k] = t
                drop.add(d.name)
            drop.add(q.name)
            removed += 1
    keep = [n for n in graph.node if n.name not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    return removed


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers no node reads any more (left behind by the edits above)."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return dropped
