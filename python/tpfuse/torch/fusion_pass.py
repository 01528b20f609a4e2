"""tpfuse.torch.FusionPass: the Inductor post-grad pass, and tpfuse.torch.compile."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from . import ir
from .apply import AppliedFusion, apply_compiled, fusion_anchors
from .compiler import FUSE_LOCAL_MODES, CompilerError, compile_module
from .translate import is_all_reduce, translate

logger = logging.getLogger("tpfuse.torch")

# "<input>:12:5: add: shapes ... do not broadcast": the line of the statement refused.
_ERROR_LINE = re.compile(r":(\d+):\d+:(.*)")
_MAX_RETRIES = 64


@dataclasses.dataclass
class GraphReport:
    """What the pass did to one FX graph."""

    all_reduces: int = 0
    fused: int = 0
    opaque_nodes: int = 0
    fusions: List[AppliedFusion] = dataclasses.field(default_factory=list)
    # all_reduce FX node name -> why it was left alone.
    left_alone: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Fused chains the pass could not place in the FX graph, by fused value, with why.
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Norm chains no all_reduce feeds that local fusion left as they are, by the norm input's
    # FX node name, with the compiler's reason (Inductor measured faster, a symbolic H, ...).
    local_left_alone: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Why the graph was left as it was, when it was (translation or compiler failure).
    untranslated: Optional[str] = None
    # all_reduce collectives still in the graph after the pass (a fused site leaves none; a
    # count above the sites left alone means a replaced chain is still alive beside its fusion).
    all_reduces_after: int = 0


@dataclasses.dataclass
class FusionReport:
    """Counts over every graph the pass has seen in this process. A graph Inductor serves from
    its FX graph or AOTAutograd cache was fused when it was cached and does not go through the
    pass again, so it is not counted (compile under
    `torch._inductor.config.patch(force_disable_caches=True)` to see every graph reported)."""

    graphs: List[GraphReport] = dataclasses.field(default_factory=list)

    @property
    def all_reduces(self) -> int:
        return sum(g.all_reduces for g in self.graphs)

    @property
    def fused(self) -> int:
        return sum(g.fused for g in self.graphs)

    @property
    def left_alone(self) -> Dict[str, str]:
        """Every graph's left_alone in one dict. Graphs name their nodes on their own: a name
        left alone in more than one graph is keyed "graph <i>: <name>" (i its index in
        `graphs`) in each."""
        return _merged([g.left_alone for g in self.graphs])

    @property
    def local_left_alone(self) -> Dict[str, str]:
        """Every graph's local_left_alone in one dict, keyed as `left_alone` is."""
        return _merged([g.local_left_alone for g in self.graphs])

    @property
    def all_reduces_after(self) -> int:
        return sum(g.all_reduces_after for g in self.graphs)

    @property
    def untranslated(self) -> List[str]:
        return [g.untranslated for g in self.graphs if g.untranslated]

    def __str__(self) -> str:
        return (f"tpfuse: {len(self.graphs)} graph(s), {self.all_reduces} all_reduce(s), "
                f"{self.fused} fused, {len(self.left_alone)} left alone, "
                f"{len(self.untranslated)} graph(s) not translated")


def _merged(per_graph: List[Dict[str, str]]) -> Dict[str, str]:
    names = collections.Counter(k for d in per_graph for k in d)
    return {(k if names[k] == 1 else f"graph {i}: {k}"): v
            for i, d in enumerate(per_graph) for k, v in d.items()}


_SOURCES = [os.path.join(os.path.dirname(__file__), f)
            for f in ("__init__.py", "ir.py", "translate.py", "compiler.py", "apply.py",
                      "fusion_pass.py")]


def _graph_backend(graph: fx.Graph) -> str:
    for n in graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and val.device.type == "cuda":
            return "cuda"
    return "cpu"


class FusionPass(CustomGraphPass):
    """Finds all_reduce -> [+ residual] -> RMSNorm -> [FP8 quant] chains in a post-grad FX graph
    and replaces each by torch.ops.tpfuse.allreduce_rmsnorm, as the C++ compiler decides.

    Use as `torch._inductor.config.post_grad_custom_post_pass = FusionPass(world_size=2)`, or
    through `tpfuse.torch.compile`. `report` holds the counts of every graph seen so far.

    world_size: the tensor-parallel degree (default: torch.distributed's world size, else 1).
    fuse_local: whether norm chains that no all_reduce feeds become the fused local op, or stay
    Inductor's: "auto" (default) leaves it to the compiler's "inductor" rule, taken from
    measurements (docs/pytorch.md, "Local chains": on CUDA they are fused except where
    Inductor's own kernel was measured faster; on the CPU only at world size 1); "on" / True
    always, "off" / False never. backend: "cpu" or "cuda" capabilities
    (default: the graph's device).
    tp_groups: the process group names (ProcessGroup.group_name) of the tensor-parallel group
    (default: every all_reduce is on it).
    """

    def __init__(self, world_size: Optional[int] = None, fuse_local: Union[str, bool] = "auto",
                 backend: Optional[str] = None, tp_groups: Optional[List[str]] = None):
        self.world_size = world_size
        self.tp_groups = tp_groups
        self.fuse_local = _fuse_local_mode(fuse_local)
        self.backend = backend
        self.report = FusionReport()

    def uuid(self) -> Any:
        return (get_hash_for_files(tuple(_SOURCES)).hex(), self.world_size, self.fuse_local,
                self.backend, tuple(self.tp_groups or ()))

    def _world_size(self) -> int:
        if self.world_size is not None:
            return self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    def __call__(self, graph: fx.Graph) -> None:
        report = GraphReport()
        self.report.graphs.append(report)
        try:
            self._run(graph, report)  # restores the graph itself when it fails half way
        except Exception as e:  # noqa: BLE001  the pass must never break torch.compile
            report.fusions, report.fused = [], 0
            report.untranslated = f"{type(e).__name__}: {e}"
            logger.warning("graph left as it was: %s", report.untranslated)
        report.all_reduces_after = sum(1 for n in graph.nodes if is_all_reduce(n))

    def _translate_and_compile(self, graph: fx.Graph):
        """Translates and compiles; a node the compiler refuses to type (its error names the
        line) becomes opaque and the graph is written again."""
        backend = self.backend or _graph_backend(graph)
        force_opaque: Dict[str, str] = {}
        cut: List[str] = []
        while True:
            tr = translate(graph, tp_groups=self.tp_groups, force_opaque=force_opaque, cut=cut)
            if (not tr.all_reduces and self.fuse_local == "off") or not tr.func.outputs:
                return tr, None  # nothing to fuse
            try:
                return tr, compile_module(tr.text, self._world_size(), backend,
                                          _compiler_mode(self.fuse_local))
            except CompilerError as e:
                m = _ERROR_LINE.search(str(e))
                node = tr.node_at_line(int(m.group(1))) if m else None
                if node is None or node.name in cut or len(force_opaque) + len(cut) >= _MAX_RETRIES:
                    raise
                if node in tr.opaque:
                    cut.append(node.name)  # refused even as opaque: leave it out of the func
                else:
                    force_opaque[node.name] = f"the compiler refused it: {m.group(2).strip()}"
                logger.debug("%%%s refused by the compiler: %s", node.name, m.group(2).strip())

    def _run(self, graph: fx.Graph, report: GraphReport) -> None:
        tr, compiled = self._translate_and_compile(graph)
        unread = {name: f"the compiler cannot read it: {why}"
                  for name, why in tr.opaque_all_reduces.items()}
        report.all_reduces = len(tr.all_reduces) + len(unread)
        report.opaque_nodes = len(tr.opaque)
        if compiled is None:
            unread.update({name: "nothing the IR types reads its sum or returns it, so there is "
                                 "no chain to compile" for name in tr.all_reduces})
        for name, why in unread.items():
            report.left_alone[name] = why
            logger.info("all_reduce %%%s left alone: %s", name, why)
        if compiled is None:
            return
        dump_dir = os.environ.get("TPFUSE_DUMP_DIR")
        if dump_dir:
            # The IR the pass wrote and what the compiler made of it, for reading and for
            # `tpfuse compile` by hand.
            os.makedirs(dump_dir, exist_ok=True)
            stem = os.path.join(dump_dir, f"graph{len(self.report.graphs) - 1}_pid{os.getpid()}")
            with open(stem + ".tpg", "w") as f:
                f.write(tr.text)
            with open(stem + ".compiled.tpg", "w") as f:
                f.write(compiled.text)
        funcs = ir.parse_module(compiled.text)
        if len(funcs) != 1:
            raise RuntimeError(f"the compiler returned {len(funcs)} funcs for one graph")
        anchors = fusion_anchors(compiled.report)
        applied, skipped = apply_compiled(graph, tr, funcs[0], anchors)
        report.fusions = applied
        report.fused = sum(len(f.anchors) for f in applied)
        report.skipped = dict(skipped)

        rejections = {r["anchor"]: r["reason"] for r in compiled.report.get("rejections", [])}
        fused_anchors = {a for f in applied for a in f.anchors}
        skipped_by_anchor = {a: why for value, why in report.skipped.items() if value in anchors
                             for a in (anchors[value][0], anchors[value][2]) if a}
        notes = {f["fused_value"]: f.get("notes", []) for f in compiled.report.get("fusions", [])}
        for f in applied:
            f.notes = list(notes.get(f.fused_value, []))
            logger.info("fused all_reduce %%%s -> allreduce_rmsnorm(quant=%s, emit=%s) "
                        "replacing %s", " + %".join(f.anchors) or "(local)",
                        f.attrs.get("quant", "none"),
                        ",".join(map(str, f.attrs.get("emit", []))),
                        ", ".join("%" + r for r in f.replaced))
            for note in f.notes:
                logger.info("  %s", note)
        for name in tr.all_reduces:
            if name in fused_anchors:
                continue
            reason = (rejections.get(name) or skipped_by_anchor.get(name)
                      or "the compiler found no chain to fuse")
            report.left_alone[name] = reason
            logger.info("all_reduce %%%s left alone: %s", name, reason)
        for value, reason in skipped:
            logger.debug("fused chain %%%s not applied: %s", value, reason)
        for r in compiled.report.get("local_unfused", []):
            report.local_left_alone[r["anchor"]] = r["reason"]
            logger.info("local chain of %%%s left alone: %s", r["anchor"], r["reason"])


def _compiler_mode(fuse_local: str) -> str:
    """The compiler's local-fusion mode for the pass's: "auto" under Inductor is the compiler's
    "inductor" rule, since a chain the pass leaves alone becomes Inductor's own kernel."""
    return "inductor" if fuse_local == "auto" else fuse_local


def _fuse_local_mode(fuse_local: Union[str, bool]) -> str:
    if fuse_local is True:
        return "on"
    if fuse_local is False:
        return "off"
    if fuse_local not in FUSE_LOCAL_MODES:
        raise ValueError(f"fuse_local must be True, False or one of {FUSE_LOCAL_MODES}, "
                         f"got {fuse_local!r}")
    return fuse_local


def compile(model: Any, world_size: Optional[int] = None, *,
            fuse_local: Union[str, bool] = "auto",
            backend: str = "inductor", options: Optional[Dict[str, Any]] = None,
            **compile_kwargs: Any):
    """torch.compile(model) with the tpfuse pass. Returns the compiled callable; its
    `tpfuse_pass.report` (a FusionReport) counts what was fused.

    backend="inductor" runs the pass as Inductor's post-grad custom pass. backend="aot_eager"
    runs it on the same decomposed aten graph and executes that graph with PyTorch's eager
    kernels: no code generation, so everything except the fused op is bitwise the eager model
    (for tests and debugging).

    With dynamic=True, torch.compile passes the Python floats a model reads (a norm's eps, a
    residual multiplier) into the graph as tensors, and no norm's eps is a constant the fused op
    can take; the returned callable traces with them specialized, as torch.compile does without
    dynamic=True (torch._dynamo.config.specialize_float): shapes stay dynamic, and a float
    argument that changes between calls recompiles.

    A call made without grad (torch.no_grad, torch.inference_mode) runs a second build, traced
    under torch._dynamo.config.compiled_autograd=True, so a module's full backward hooks (which
    transformers' tp_plan puts on per-head norms) do not break its graph; calls with grad run
    the first (docs/pytorch.md, "Calls without grad").
    """
    fusion_pass = FusionPass(world_size=world_size, fuse_local=fuse_local)
    build = functools.partial(_torch_compile, model, fusion_pass, backend, options)
    compiled = build(dict(compile_kwargs))
    if not torch._dynamo.config.compiled_autograd:
        # Built now, so its Dynamo context reads the setting now; traced at its first call.
        with torch._dynamo.config.patch(compiled_autograd=True):
            inference = build(dict(compile_kwargs))
        compiled = _no_grad_calls_through(compiled, inference)
    if compile_kwargs.get("dynamic") is True:
        compiled = _with_floats_specialized(compiled)
    compiled.tpfuse_pass = fusion_pass
    return compiled


def _torch_compile(model: Any, fusion_pass: "FusionPass", backend: str,
                   options: Optional[Dict[str, Any]], compile_kwargs: Dict[str, Any]) -> Any:
    """torch.compile(model) with `fusion_pass` as the backend's post-grad pass."""
    if backend == "inductor":
        # torch.compile takes a mode or options, not both: the mode becomes its options.
        mode = compile_kwargs.pop("mode", None)
        opts = dict(torch._inductor.list_mode_options(mode)) if mode else {}
        opts.update(options or {})
        # A post-grad pass the caller already has (in options, else in Inductor's config when
        # this is called) still runs, after this one; another FusionPass would only fuse again.
        theirs = opts.get("post_grad_custom_post_pass",
                          torch._inductor.config.post_grad_custom_post_pass)
        if isinstance(theirs, FusionPass):
            logger.warning("a FusionPass is already Inductor's post-grad pass; "
                           "tpfuse.torch.compile runs its own instead")
            theirs = None
        opts["post_grad_custom_post_pass"] = (
            fusion_pass if theirs is None else ChainedPass(fusion_pass, theirs))
        compiled = torch.compile(model, backend="inductor", options=opts, **compile_kwargs)
    elif backend == "aot_eager":
        if options:
            raise ValueError("options are Inductor's; backend='aot_eager' takes none")
        compiled = torch.compile(model, backend=_aot_eager_backend(fusion_pass), **compile_kwargs)
    else:
        raise ValueError(f"backend must be 'inductor' or 'aot_eager', got {backend!r}")
    return compiled


def _no_grad_calls_through(compiled: Any, inference: Any) -> Any:
    """`compiled`, whose calls made without grad run `inference` instead: the same model
    compiled under torch._dynamo.config.compiled_autograd=True, where Dynamo traces a module's
    full backward hooks into the graph rather than breaking the graph at that module. Without
    grad no such hook can run, so both compute the same; only the graphs differ. transformers'
    tp_plan puts one on every replicated_with_grad_allreduce module (Qwen3's and Gemma3's
    per-head norms, to sum their gradients across ranks): with the graph broken there, every
    all_reduce's sum leaves its graph and none can be fused. Calls with grad run `compiled`,
    the build as given, broken where torch.compile breaks it. (Dynamo guards each graph on the
    grad mode, so neither traces the other's calls.)"""

    def dispatch(call, no_grad_call):
        @functools.wraps(call)
        def run(*args, **kwargs):
            if torch.is_grad_enabled():
                return call(*args, **kwargs)
            return no_grad_call(*args, **kwargs)

        return run

    if isinstance(compiled, torch.nn.Module):
        # (The closure keeps `inference` alive; as an attribute it would be a submodule.)
        compiled.forward = dispatch(compiled.forward, lambda *a, **k: inference.forward(*a, **k))
        return compiled
    return dispatch(compiled, inference)


def _with_floats_specialized(compiled: Any) -> Any:
    """`compiled` (torch.compile's result), tracing under specialize_float=True: a compiled
    module's forward is wrapped, a compiled function is."""

    def specialized(call):
        @functools.wraps(call)
        def run(*args, **kwargs):
            with torch._dynamo.config.patch(specialize_float=True):
                return call(*args, **kwargs)

        return run

    if isinstance(compiled, torch.nn.Module):
        compiled.forward = specialized(compiled.forward)
        return compiled
    return specialized(compiled)


class ChainedPass(CustomGraphPass):
    """Inductor's post-grad custom pass slot holds one pass: this runs the tpfuse pass, then the
    one the caller had there. Its uuid combines both (None, so no FX-graph caching, when the
    caller's pass is a plain callable without one)."""

    def __init__(self, first: CustomGraphPass, then: Any):
        self.first = first
        self.then = then

    def __call__(self, graph: fx.Graph) -> None:
        self.first(graph)
        self.then(graph)

    def uuid(self) -> Any:
        # Inductor's own rule: a pass that is no CustomGraphPass, or whose uuid is falsy, is not
        # cached.
        then_uuid = self.then.uuid() if isinstance(self.then, CustomGraphPass) else None
        return (self.first.uuid(), then_uuid) if then_uuid else None


def _aot_eager_backend(fusion_pass: FusionPass):
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    def fw_compiler(gm: fx.GraphModule, example_inputs):
        fusion_pass(gm.graph)
        gm.recompile()
        return gm

    return aot_autograd(fw_compiler=fw_compiler, decompositions=select_decomp_table())
