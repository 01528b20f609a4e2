"""Compiled IR -> FX: puts each fused op the compiler made into the FX graph (docs/pytorch.md).

The compiler names every result of a fused op after the value it takes over, so a result whose
name is an FX node's replaces that node. Nodes the compiler added around a fused op (a view that
flattens [B, S, H] to [T, H], a cast, the reciprocal of a scale) are materialized as aten ops.
Everything else the compiler changed (canonical forms of chains it did not fuse) stays as the FX
graph wrote it. A fusion that cannot be placed is skipped with the reason; the others still apply.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import ir
from .translate import IR_TO_TORCH_DTYPE, Translation


_ARITHMETIC = ("add", "sub", "mul", "div")


@dataclasses.dataclass
class AppliedFusion:
    anchor: str                  # the all_reduce's FX node name ("" for a local chain)
    fused_value: str
    attrs: Dict[str, Any]
    replaced: List[str]          # FX nodes whose uses now read a fused result
    # What the compiler left out of the chain and why (a quant that stays unfused, an FP8
    # quantization of the norm written in ops no form folds), in its words.
    notes: List[str] = dataclasses.field(default_factory=list)
    # Two all_reduces summed (attribute second_sum): the other all_reduce's FX node name.
    second_anchor: str = ""

    @property
    def anchors(self) -> List[str]:
        """The all_reduces the fusion replaces (none for a local chain)."""
        return [a for a in (self.anchor, self.second_anchor) if a]


class ApplyError(Exception):
    pass


def _signature(node: ir.Node) -> Tuple:
    return (node.op, tuple(node.operands), tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))


def fused_op_overload():
    """torch.ops.tpfuse.allreduce_rmsnorm, or None when the op library is not loaded."""
    try:
        import tpfuse.ops  # noqa: F401  (registers the op where the package provides it)
    except ImportError:
        pass
    try:
        return torch.ops.tpfuse.allreduce_rmsnorm.default
    except (AttributeError, RuntimeError):
        return None


def _fused_args(attrs: Dict[str, Any], operands: List[fx.Node], group: Optional[str]):
    # tpfuse::allreduce_rmsnorm(Tensor x, Tensor? residual, Tensor weight, Tensor? scale,
    #     Tensor? x2, Tensor? pre_weight, Tensor? bias, *, str[] emit, str group_name, float eps,
    #     float weight_bias, str quant, int group_size, str scale_layout, str scale_fmt,
    #     str[]? rounding, bool local, float sum_scale, float first_scale, float second_scale,
    #     bool second_sum_into_residual, float? pre_eps) -> Tensor[]
    """Arguments of torch.ops.tpfuse.allreduce_rmsnorm for a fused IR node's operands/attrs.

    Operands come in Contract 3's order x, [x2 | bias], [residual], w, [pre_weight], [scale];
    which are present follows from second_sum (x2), bias, pre_residual_norm (pre_weight), quant
    (scale iff fp8_tensor) and the count.
    """
    quant = str(attrs.get("quant", "none"))
    has_scale = quant == "fp8_tensor"
    second_sum = bool(attrs.get("second_sum", False))
    has_bias = bool(attrs.get("bias", False))
    pre_norm = bool(attrs.get("pre_residual_norm", False))
    rest = operands[2:] if second_sum or has_bias else operands[1:]
    has_residual = len(rest) == 2 + int(has_scale) + int(pre_norm)
    x = operands[0]
    x2 = operands[1] if second_sum else None
    bias = operands[1] if has_bias else None
    residual = rest[0] if has_residual else None
    w = rest[1 if has_residual else 0]
    pre_weight = rest[2 if has_residual else 1] if pre_norm else None
    scale = rest[-1] if has_scale else None
    kwargs = dict(
        group_name=group or "",
        eps=float(attrs.get("eps", 1e-6)),
        weight_bias=float(attrs.get("weight_bias", 0.0)),
        quant=quant,
        group_size=int(attrs.get("group_size", 128)),
        scale_layout=str(attrs.get("scale_layout", "row")),
        scale_fmt=str(attrs.get("scale_fmt", "f32")),
        emit=[str(e) for e in attrs.get("emit", [])],
        rounding=[str(r) for r in attrs.get("rounding", [])],
        # The compiler's flag: a chain no all_reduce feeds, or any chain at world size 1.
        local=bool(attrs.get("local", False)) or group is None,
    )
    for name in ("sum_scale", "first_scale", "second_scale"):
        if float(attrs.get(name, 1.0)) != 1.0:
            kwargs[name] = float(attrs[name])
    if has_bias:
        return (x, residual, w, scale, None, None, bias), kwargs
    if pre_norm:
        kwargs["pre_eps"] = float(attrs.get("pre_eps", 1e-6))
        return (x, residual, w, scale, None, pre_weight), kwargs
    if second_sum:
        if attrs.get("second_sum_into_residual", False):
            kwargs["second_sum_into_residual"] = True
        return (x, residual, w, scale, x2), kwargs
    return (x, residual, w, scale), kwargs


def _fake_value(target, args, kwargs):
    vals = []
    fx.node.map_aggregate((args, kwargs), lambda a: vals.append(a.meta.get("val"))
                          if isinstance(a, fx.Node) else None)
    mode = torch._guards.detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    if mode is None:
        return None
    real = fx.node.map_arg((args, kwargs), lambda a: a.meta.get("val"))
    with mode:
        return target(*real[0], **real[1])


class Applier:
    def __init__(self, graph: fx.Graph, tr: Translation, compiled: ir.Func,
                 anchors: Dict[str, Tuple[str, bool, str]]):
        self.graph = graph
        self.tr = tr
        self.compiled = compiled
        self.anchors = anchors
        self.original = {r: _signature(n) for n in tr.func.nodes for r in n.results}
        self.producer: Dict[str, ir.Node] = {r: n for n in compiled.nodes for r in n.results}
        self.consumers: Dict[str, List[ir.Node]] = {}
        for n in compiled.nodes:
            for o in n.operands:
                self.consumers.setdefault(o, []).append(n)
        self.compiled_types = dict(compiled.params)
        # The IR's type promotions the compiler wrote out: a new cast to f32 of a 16-bit graph
        # value, read by add / sub / mul / div. FX keeps them implicit in the op, so a node that
        # differs from the graph's only by them computes what the graph's node computes.
        self.promotions: Dict[str, str] = {
            n.results[0]: n.operands[0] for n in compiled.nodes
            if n.op == "cast" and str(n.attrs.get("to")) == "f32" and n.results[0] not in tr.types
            and n.operands[0] in tr.types and tr.types[n.operands[0]].dtype in ("bf16", "f16")
            and all(c.op in _ARITHMETIC for c in self.consumers.get(n.results[0], []))}
        self._place: Tuple[Dict[fx.Node, int], int] = ({}, -1)  # set while materializing
        self._x_val: Any = None  # a tensor the fusion reads (its FX value), while materializing
        # The reads that moved: (what the graph read, what the compiled func reads instead) for
        # each func output and each operand of an opaque node (an FX node the compiler cannot
        # see into: it reads the IR value positionally, as the output does). The compiler may
        # fold a view of a fused result away (q.flatten(-2), s.squeeze(-1)), so a value the
        # graph read is now read from the fusion under another name.
        self.moved_reads: List[Tuple[str, str]] = list(zip(tr.func.outputs, compiled.outputs))
        opaque_after = {n.results[0]: n for n in compiled.nodes if n.op == "opaque" and n.results}
        for n in tr.func.nodes:
            after = opaque_after.get(n.results[0]) if n.op == "opaque" and n.results else None
            if after is not None and len(after.operands) == len(n.operands):
                self.moved_reads += list(zip(n.operands, after.operands))
        self.moved_to = {now for was, now in self.moved_reads if was != now}
        self.sym_refs = _symbol_refs(graph)
        # Graph values taken over by the fusions applied so far -> the FX node now holding each:
        # a later fusion that reads one (a chain whose residual is an earlier fusion's residual
        # output, a norm that reads an earlier fused norm) reads the fused op, not the chain it
        # replaced, or that chain, and its all_reduce, would stay alive.
        self.taken: Dict[str, fx.Node] = {}
        # What was done to the graph, in order, so that a failure can take it all back:
        # ("node", new_node) or ("use", user, old, new).
        self.undo_log: List[Tuple] = []
        self.sites_to_drop: List[Any] = []

    def undo(self, mark: int = 0) -> None:
        """Takes back everything logged after `mark`."""
        entries = self.undo_log[mark:]
        for entry in reversed(entries):
            if entry[0] == "use":
                _, user, old, new = entry
                user.replace_input_with(new, old)
        for entry in reversed(entries):
            if entry[0] == "node":
                self.graph.erase_node(entry[1])
        del self.undo_log[mark:]
        if mark == 0:
            self.sites_to_drop.clear()

    def changed(self, node: ir.Node) -> bool:
        if node.op == "allreduce_rmsnorm":
            return True
        sig = _signature(node)
        if node.op in _ARITHMETIC and any(o in self.promotions for o in node.operands):
            # Read through the written-out promotions where the graph's operands are of two
            # dtypes: the graph's op then promotes them the same way.
            operands = [self.promotions.get(o, o) for o in node.operands]
            if len({self.tr.types[o].dtype for o in operands if o in self.tr.types}) == 2:
                sig = (node.op, tuple(operands), sig[2])
        return any(self.original.get(r) != sig for r in node.results)

    def run(self) -> Tuple[List[AppliedFusion], List[Tuple[str, str]]]:
        applied, skipped = [], []
        fused = [n for n in self.compiled.nodes if n.op == "allreduce_rmsnorm"]
        if len(self.compiled.outputs) != len(self.tr.func.outputs):
            # The outputs pair up position by position (_apply_one): nothing applies without that.
            why = (f"the compiled func returns {len(self.compiled.outputs)} values, "
                   f"the graph {len(self.tr.func.outputs)}")
            return applied, [(n.results[0], why) for n in fused]
        for node in fused:
            mark, drops = len(self.undo_log), len(self.sites_to_drop)
            try:
                fusion, taken = self._apply_one(node, self._anchor(node),
                                                self._second_anchor(node))
                applied.append(fusion)
                self.taken.update(taken)
            except ApplyError as e:
                self.undo(mark)  # this fusion only; the others stand
                del self.sites_to_drop[drops:]
                skipped.append((node.results[0], str(e)))
        return applied, skipped

    def _anchor(self, fused: ir.Node) -> Optional[str]:
        """The all_reduce site the fused node replaces (None: a local chain), as the compiler's
        report names it: the compiler may have rewritten the views between the all_reduce's
        input and the fused op, so the operand alone does not tell."""
        value = fused.results[0]
        if value not in self.anchors:
            raise ApplyError(f"the compiler's report has no fusion for %{value}")
        anchor, local, _ = self.anchors[value]
        # A fusion is `local` both for a chain no all_reduce feeds and, at world size 1, for an
        # all_reduce's chain (the all_reduce is the identity there, and is replaced all the same).
        if anchor in self.tr.all_reduces:
            return anchor
        if local:
            return None
        raise ApplyError(f"the compiler's anchor %{anchor} is not an all_reduce of the graph")

    def _second_anchor(self, fused: ir.Node) -> Optional[str]:
        """The other all_reduce of two summed (attribute second_sum), or None."""
        second = self.anchors[fused.results[0]][2]
        if not second:
            return None
        if second not in self.tr.all_reduces:
            raise ApplyError(f"the compiler's second anchor %{second} is not an all_reduce of "
                             "the graph")
        return second

    # ---- one fusion

    def _apply_one(self, fused: ir.Node, anchor: Optional[str],
                   second: Optional[str] = None) -> Tuple[AppliedFusion, Dict[str, fx.Node]]:
        pre = self._pre_nodes(fused)
        post = self._post_nodes(fused)
        group = self.tr.all_reduces[anchor].group if anchor else None
        site = self.tr.all_reduces.get(anchor) if anchor else None
        site2 = self.tr.all_reduces[second] if second else None
        if site2 is not None and site2.group != group:
            raise ApplyError(f"the two summed all_reduces %{anchor} and %{second} run on "
                             f"different groups ({group!r}, {site2.group!r})")

        order = {n: i for i, n in enumerate(self.graph.nodes)}
        env: Dict[str, fx.Node] = {}

        def fx_of(name: str) -> fx.Node:
            if name in env:
                return env[name]
            if name in self.taken:
                return self.taken[name]
            node = self.tr.node_of.get(name)
            if node is None:
                raise ApplyError(f"value %{name} has no FX node")
            return node

        # Where the new nodes go: after the last FX node they read.
        reads = {o for n in pre + [fused] for o in n.operands if o not in self.producer or
                 self.producer[o] not in pre}
        read_nodes = [fx_of(o) for o in reads]
        insert_after = max(read_nodes, key=lambda n: order[n])
        for s in (site, site2):
            if s is not None and s.inplace and order[insert_after] >= order[s.collective]:
                raise ApplyError("an operand is defined after the in-place all_reduce mutates its "
                                 "input")

        # Every FX node a result takes over (graph value name -> its FX node and the compiled
        # value that replaces it), and the first of their remaining users.
        takeover: Dict[str, Tuple[fx.Node, str]] = {}
        for n in [fused] + post:
            for r in n.results:
                if r in self.tr.types:
                    takeover[r] = (self.tr.node_of[r], r)
        # A func output or opaque operand the compiler now reads from this fusion under another
        # name (a view of a result that it folded away, say): every use FX can see of an IR
        # value goes through those reads, so the graph value read there is taken over too.
        made = {r for n in pre + [fused] + post for r in n.results}
        for was, now in self.moved_reads:
            if was != now and now in made and was in self.tr.node_of and was not in takeover:
                producer = self.producer[now]
                ty = producer.types[producer.results.index(now)] if producer.types else None
                if ty is not None and ty != self.tr.types[was]:
                    raise ApplyError(f"the compiler reads %{now} ({ty}) where the graph read "
                                     f"%{was} ({self.tr.types[was]})")
                takeover[was] = (self.tr.node_of[was], now)
        # A user before the fused op's place is fine where it dies with the chain: it feeds only
        # values taken over (or other such users), so it is left as it is for dead code
        # elimination (the norm's cast of h when the scale's cast comes after the norm).
        taken_nodes = {old for old, _ in takeover.values()}
        dying: set = set()
        dies: Dict[fx.Node, bool] = {}  # _dies_with's answers, shared by every reader
        for r, (old, _) in takeover.items():
            for user in self._users_to_redirect(old, site, r):
                if order[user] <= order[insert_after]:
                    if not self._dies_with(user, taken_nodes, dies):
                        raise ApplyError(
                            f"%{user.name} reads %{r} before the fused op's operands exist")
                    dying.add(user)

        # Materialize.
        # NOTE: inserting before the node that follows keeps the new nodes in creation order.
        self._place = (order, order[insert_after])  # sizes must be known by then (_dim_node)
        # A value the new nodes read (the chain's x, residual or weight), for a full's device:
        # the first in graph order, so that the choice does not depend on a set's order.
        self._x_val = next((v for v in (n.meta.get("val") for n in sorted(read_nodes, key=order.get))
                            if isinstance(v, torch.Tensor)), None)
        with self.graph.inserting_before(insert_after.next):
            for n in pre + [fused] + post:
                outs = self._materialize(n, [fx_of(o) for o in n.operands], group)
                for r, out in zip(n.results, outs):
                    env[r] = out

        # The fused op's results are contiguous: a value it takes over must be laid out so too,
        # or a later view of it (a head-dim norm on a transposed tensor, read back through
        # .view) would fail.
        for r, (old, src) in takeover.items():
            if not _same_layout(old.meta.get("val"), env[src].meta.get("val")):
                raise ApplyError(f"%{r} is not laid out contiguously (strides "
                                 f"{list(old.meta['val'].stride())}), and the fused op's result is")

        # Redirect.
        replaced = []
        taken: Dict[str, fx.Node] = {}
        for r, (old, src) in takeover.items():
            new = env[src]
            taken[r] = new
            holders = [old] + self.tr.aliases.get(r, [])
            for user in self._users_to_redirect(old, site, r):
                if user in dying:
                    continue
                for holder in holders:
                    if holder in user.all_input_nodes:
                        user.replace_input_with(holder, new)
                        self.undo_log.append(("use", user, holder, new))
            replaced.append(old.name)
        self.sites_to_drop += [s for s in (site, site2) if s is not None]

        return AppliedFusion(anchor or "", fused.results[0], dict(fused.attrs), replaced,
                             second_anchor=second or ""), taken

    def _dies_with(self, node: fx.Node, taken: set, memo: Dict[fx.Node, bool]) -> bool:
        """Whether `node` has no use left once the values in `taken` are replaced: a pure call
        whose every user is taken over or dies so too."""
        if node in memo:
            return memo[node]
        memo[node] = False  # a cycle cannot happen in a DAG; this only guards the recursion
        ok = node.op == "call_function" and not node.is_impure() and all(
            u in taken or self._dies_with(u, taken, memo) for u in node.users)
        memo[node] = ok
        return ok

    def _users_to_redirect(self, old: fx.Node, site, name: str) -> List[fx.Node]:
        users = list(old.users)
        for alias in self.tr.aliases.get(name, []):
            users += [u for u in alias.users]
        users = [u for u in dict.fromkeys(users) if u not in self.tr.aliases.get(name, [])]
        if site is not None and name == site.value:
            # Everything that reads the sum: the wait's users, and for the in-place form the
            # reads of the input after the collective.
            users = [u for u in users if u is not site.collective]
            if site.inplace:
                order = {n: i for i, n in enumerate(self.graph.nodes)}
                after = order[site.collective]
                extra = [u for u in site.partial.users if order[u] > after and u is not site.wait]
                if site.wait is not None:
                    extra += [u for u in site.collective.users if u is not site.wait]
                users = list(dict.fromkeys(users + extra))
        return users

    def _drop_collective(self, site) -> None:
        """Erases the all_reduce (and its wait) once nothing reads them."""
        for n in (site.wait, site.collective):
            # A collective that is a pure op (vLLM's, AutoDeploy's) may be gone already: dead
            # code elimination takes it with the chain.
            if n is None or getattr(n, "_erased", False):
                continue
            if n is site.collective and site.inplace:
                others = [u for u in site.partial.users if u is not n and u not in (site.wait,)]
                # The in-place collective may go only once nothing after it reads the input.
                order = {m: i for i, m in enumerate(self.graph.nodes)}
                if any(order[u] > order[n] for u in others):
                    continue
            if not n.users:
                self.graph.erase_node(n)

    def _pre_nodes(self, fused: ir.Node) -> List[ir.Node]:
        out: List[ir.Node] = []

        def visit(name: str) -> None:
            if name in self.tr.types or name in self.compiled_types:
                return
            node = self.producer.get(name)
            if node is None:
                raise ApplyError(f"%{name} has no producer in the compiled graph")
            if node in out:
                return
            for o in node.operands:
                visit(o)
            out.append(node)

        for o in fused.operands:
            visit(o)
        return out

    def _post_nodes(self, fused: ir.Node) -> List[ir.Node]:
        out: List[ir.Node] = []
        frontier = list(fused.results)
        while frontier:
            name = frontier.pop(0)
            for c in self.consumers.get(name, []):
                if c in out or not self.changed(c) or c.op == "allreduce_rmsnorm":
                    continue
                if c.results[0] in self.promotions and not any(
                        self.changed(u) for u in self.consumers.get(c.results[0], [])):
                    continue  # the graph's ops that read it promote the fused result themselves
                if c.op in ("view", "cast"):
                    out.append(c)
                    frontier.extend(c.results)
                elif not (name in self.tr.types or (c.op == "opaque" and name in self.moved_to)
                          or self._graph_value_under_views(name) is not None):
                    raise ApplyError(f"the compiler's {c.op} reads the new value %{name}")
        # A view or cast read only by a compiler op the fusion left (a second quant of the norm,
        # reading the emitted [B, S, H] norm through the compiler's own [rows, H] view): the
        # graph's ops compute that op's values from the graph's value, which the fused result
        # takes over, so nothing reads it in FX and it is not written.
        while True:
            kept = {o for n in out for o in n.operands}
            dead = [n for n in out if not any(
                r in self.tr.types or r in self.moved_to or r in kept for r in n.results)]
            if not dead:
                return out
            out = [n for n in out if n not in dead]

    def _graph_value_under_views(self, name: str) -> Optional[str]:
        """The graph value that `name` is a view or cast of (through the compiler's views and
        casts), or None."""
        while name not in self.tr.types:
            node = self.producer.get(name)
            if node is None or node.op not in ("view", "cast"):
                return None
            name = node.operands[0]
        return name

    def _call(self, target, args, kwargs=None) -> fx.Node:
        node = self.graph.call_function(target, args, kwargs)
        self.undo_log.append(("node", node))
        return node

    def _materialize(self, node: ir.Node, args: List[fx.Node], group: Optional[str]) -> List[fx.Node]:
        g = self
        if node.op == "allreduce_rmsnorm":
            op = fused_op_overload()
            if op is None:
                raise ApplyError("torch.ops.tpfuse.allreduce_rmsnorm is not loaded")
            fargs, fkwargs = _fused_args(node.attrs, args, group)
            call = g._call(op, fargs, fkwargs)
            call.meta["val"] = _fake_value(op, fargs, fkwargs)
            outs = []
            for i in range(len(node.results)):
                item = g._call(operator.getitem, (call, i))
                if call.meta["val"] is not None:
                    item.meta["val"] = call.meta["val"][i]
                outs.append(item)
            return outs
        if node.op == "view":
            shape = [self._dim_node(d) for d in node.attrs["shape"]]
            target, fargs = torch.ops.aten.reshape.default, (args[0], shape)
        elif node.op == "cast":
            target = torch.ops.prims.convert_element_type.default
            fargs = (args[0], IR_TO_TORCH_DTYPE[str(node.attrs["to"])])
        elif node.op == "pow":
            target, fargs = torch.ops.aten.pow.Tensor_Scalar, (args[0], node.attrs["exponent"])
        elif node.op == "reciprocal":
            target, fargs = torch.ops.aten.reciprocal.default, (args[0],)
        elif node.op == "full":  # a norm's unit weight, on the device of what the fusion reads
            x_val = self._x_val
            if not isinstance(x_val, torch.Tensor):
                raise ApplyError("no value the fusion reads carries a device for its unit weight")
            target = torch.ops.aten.full.default
            fargs = ([int(d) for d in node.attrs["shape"]], node.attrs["value"])
            fkwargs = {"dtype": IR_TO_TORCH_DTYPE[str(node.attrs["dtype"])], "device": x_val.device}
            call = g._call(target, fargs, fkwargs)
            # No tensor operand to take the fake mode from: that value's.
            mode = torch._guards.detect_fake_mode([x_val])
            if mode is not None:
                with mode:
                    call.meta["val"] = target(*fargs, **fkwargs)
            return [call]
        else:
            raise ApplyError(f"cannot write the compiler's {node.op} node in FX")
        call = g._call(target, fargs)
        call.meta["val"] = _fake_value(target, fargs, {})
        return [call]

    def _dim_node(self, d: Any):
        if isinstance(d, int):
            return d
        if str(d).isdigit():  # the constant factor of 2*s0
            return int(str(d))
        factors = sorted(str(d).split("*"))  # a product dim, in any order (s77*s27)
        if len(factors) > 1:
            # A product (the rows of [B, S, H] with B and S dynamic): the product of its
            # factors' sizes, each from where it first appears (the inputs, ahead of the fused
            # op), not from a node holding the product, which may come after it.
            out = self._dim_node(factors[0])
            for factor in factors[1:]:
                f = self._dim_node(factor)
                val = _size_value(out) * _size_value(f)
                out = self._call(operator.mul, (out, f))
                out.meta["val"] = val
            return out
        ref = self.sym_refs.get(factors[0])
        if ref is None:
            raise ApplyError(f"no FX node carries the size {d}")
        node, dim = ref
        order, place = self._place
        if order.get(node, place + 1) > place:
            raise ApplyError(f"the size {d} is first known after the fused op's place")
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.SymInt):
            return node
        if dim < 0:
            return node  # a node whose value is the size itself (sym_size, a SymInt op)
        size = self._call(torch.ops.aten.sym_size.int, (node, dim))
        size.meta["val"] = node.meta["val"].shape[dim]
        return size


def _size_value(x: Any) -> Any:
    """The size an int or an FX size node stands for (a SymInt)."""
    return x if isinstance(x, int) else x.meta["val"]


def _same_layout(a: Any, b: Any) -> bool:
    """Whether tensors a and b have the same strides wherever a dimension has more than one
    element (provably, without adding guards on symbolic sizes). Values that are not tensors,
    or tensors of other shapes, are another check's business."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return True
    for size, sa, sb in zip(a.shape, a.stride(), b.stride()):
        if not (statically_known_true(size <= 1) or statically_known_true(sa == sb)):
            return False
    return True


def _symbol_refs(graph: fx.Graph) -> Dict[str, Tuple[fx.Node, int]]:
    """Symbol name -> (an FX node, its dim) where that symbolic size first appears."""
    from .translate import _dim
    refs: Dict[str, Tuple[fx.Node, int]] = {}
    for n in graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.SymInt):
            refs.setdefault(str(_dim(val)), (n, -1))
        elif isinstance(val, torch.Tensor):
            for i, d in enumerate(val.shape):
                if isinstance(d, torch.SymInt):
                    refs.setdefault(str(_dim(d)), (n, i))
    return refs


def fusion_anchors(report: Dict[str, Any]) -> Dict[str, Tuple[str, bool, str]]:
    """Fused value -> (its anchor, whether the fusion is local, the second anchor of two summed
    all_reduces or ""), from the compiler's JSON report (`fusions`)."""
    return {f["fused_value"]: (f["anchor"], bool(f.get("local")), f.get("second_anchor", ""))
            for f in report.get("fusions", [])}


def apply_compiled(graph: fx.Graph, tr: Translation, compiled: ir.Func,
                   anchors: Dict[str, Tuple[str, bool, str]]):
    """Applies every fused op the compiler made (whether local chains are fused is the
    compiler's decision); on any exception the graph is restored before it propagates.
    anchors: fusion_anchors() of the compiler's report."""
    applier = Applier(graph, tr, compiled, anchors)
    try:
        applied, skipped = applier.run()
        graph.lint()
    except BaseException:
        applier.undo()
        raise
    # Past this point nothing can fail half way: erase what the fused ops made dead. FX keeps
    # collectives (they have effects), so each replaced one goes by hand once unread.
    if applied:
        graph.eliminate_dead_code()
    for site in applier.sites_to_drop:
        applier._drop_collective(site)
    return applied, skipped
