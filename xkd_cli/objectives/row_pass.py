"""The chunked pass itself, under :mod:`xkd_cli.objectives.chunked`'s functions: a row function over the
counted positions of logits (tensors or fused heads), chunk by chunk, as an autograd function whose forward and
backward never hold more than one chunk's ``N x V`` float32 work; and, for the columns a caller only sums, the
gradient taken in the forward (:class:`ChunkedRows`)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from xkd_cli.models.head import HeadLogits

RowFn = Callable[[Sequence[Tensor], Tensor], Tensor]  # (float32 N x V rows per logits tensor, N targets) -> N


class Source(NamedTuple):
    """Where one logits input's tensors start in the pass's tensors, and for a fused head its soft-cap and check
    (a :class:`HeadLogits` without tensors; its hidden states, weight and bias are the next three tensors)."""

    start: int
    head: HeadLogits | None = None


class RowPlan(NamedTuple):
    row_fn: RowFn
    chunks: list[tuple[Tensor, Tensor]]  # (flat positions b*T + t, their targets) per chunk
    steps: int  # T
    sources: list[Source]  # the logits inputs, in the order row_fn reads their rows
    n_tensors: int  # tensors of the logits inputs; the extras follow them
    summed: tuple[int, ...] = ()  # columns of row_fn's values that the caller only sums (see ChunkedRows)

    def where(self, i: int) -> tuple[Tensor, Tensor]:
        chunk = self.chunks[i][0]
        return chunk // self.steps, chunk % self.steps

    def rows(self, i: int, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The chunk's float32 logits rows (N x V) per logits input, then the extras' rows as they are."""
        where = self.where(i)
        rows = []
        for src in self.sources:
            if src.head is None:
                rows.append(tensors[src.start][where].float())
            else:
                hidden, weight, bias = tensors[src.start:src.start + 3]
                rows.append(src.head._replace(weight=weight, bias=bias).rows(hidden[where]).float())
        return rows + [x[where] for x in tensors[self.n_tensors:]]

    def run(self, i: int, tensors: Sequence[Tensor]) -> Tensor:
        return self.row_fn(self.rows(i, tensors), self.chunks[i][1])


class ChunkedRows(torch.autograd.Function):
    """``row_fn`` over the valid rows, one chunk at a time, with a gradient for the logits.

    Forward keeps nothing but references to its inputs. Backward recomputes one chunk at a time (so the
    float32 intermediates of one chunk are alive at once, as under activation checkpointing) and writes
    each chunk's row gradients straight into one ``B x T x V`` buffer per logits tensor that needs a
    gradient. Checkpointing each chunk instead gave every chunk a full-size zero gradient of its own,
    added up chunk after chunk: a second ``B x T x V`` tensor at the peak and O(chunks · B·T·V) memory
    traffic. The values and gradients are the same bit for bit (each position's gradient comes from its
    one chunk; adding zeros changed nothing).

    A fused head (:class:`HeadLogits`) has no ``B x T x V`` buffer: each chunk's logits are made again from its
    hidden rows, the gradient of the pre-cap logits z = h·Wᵀ + b (``N x V``) is taken, and from it the hidden
    rows' gradient (z̄·W, written into a ``B x T x H`` buffer) and the weight's and bias's (z̄ᵀ·h and Σ z̄, added
    into one buffer each, float32 unless the weight is float32 itself: the chunks' sums are not rounded to
    bfloat16 one by one).

    Making the logits again costs the output projections twice more per step, the teacher's included. Where
    every input that needs a gradient is a fused head and the caller only sums some columns of the values
    (``plan.summed``: the KD sum), the forward takes those columns' gradients while it has each chunk's
    logits, for an upstream gradient of 1 (Liger's way): z̄·W and z̄ᵀ·h, kept until the backward, which
    scales them by the upstream gradient if it is the same at every position (a sum's is) and makes no
    logits at all when no other column has a gradient. A column whose upstream is not uniform after all
    goes through the backward's pass like the others, so the result is always the gradient; only its
    rounding differs (each position's z̄ is scaled after the projection, not before).
    """

    @staticmethod
    def forward(ctx, plan: RowPlan, *tensors: Tensor) -> Tensor:
        ctx.plan = plan
        ctx.save_for_backward(*tensors)
        # A fused head's logits are made again in the backward, under the autocast they were made with here.
        device = tensors[0].device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        wanted = wanted_sources(plan, ctx.needs_input_grad[1:])
        ctx.early = None
        if plan.summed and wanted and all(src.head is not None for src in wanted):
            values, ctx.early = early_gradients(plan, tensors, wanted, ctx.needs_input_grad[1:], ctx.autocast)
            return values
        return torch.cat([plan.run(i, tensors) for i in range(len(plan.chunks))])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values: Tensor):
        plan, tensors = ctx.plan, ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        wanted = wanted_sources(plan, needs)
        upstream, taken = grad_values, {}
        if ctx.early is not None:
            columns = grad_values if grad_values.dim() == 2 else grad_values[:, None]
            first = columns[0] if len(columns) else columns.new_zeros(columns.shape[1])
            taken = {c: first[c] for c in ctx.early if bool((columns[:, c] == first[c]).all())}
            if taken:
                rest = columns.clone()
                rest[:, list(taken)] = 0
                upstream = rest.view_as(grad_values)
        grads: list[Tensor | None] = [None] * len(tensors)
        if not taken or bool(upstream.any()):
            grads = late_gradients(plan, tensors, wanted, needs, upstream, ctx.autocast)
        for c, scale in taken.items():
            for k, early in ctx.early[c].items():
                if needs[k]:
                    part = (early * scale).to(tensors[k].dtype)
                    grads[k] = part if grads[k] is None else grads[k] + part
        return (None, *grads)


def wanted_sources(plan: RowPlan, needs: Sequence[bool]) -> list[Source]:
    """The logits inputs with a tensor that needs a gradient."""
    return [src for src in plan.sources if any(needs[src.start:src.start + (1 if src.head is None else 3)])]


def rows_with_leaves(plan: RowPlan, i: int, tensors: Sequence[Tensor], wanted: list[Source], autocast,
                      check: bool = False):
    """The chunk's rows for ``row_fn`` with autograd leaves where a gradient is wanted: a logits tensor's rows,
    or a fused head's pre-cap logits z (made under the given autocast). Returns the rows, the leaves in the
    order of ``wanted``, and per fused head in ``wanted`` its hidden rows and weight. ``check``: make the
    heads' own checks of their logits (the teacher's, :meth:`HeadLogits.rows`), as the forward does."""
    where = plan.where(i)
    rows, leaves, heads = [], [], []
    for src in plan.sources:
        if src.head is None:
            rows.append(tensors[src.start][where].detach().float().requires_grad_(src in wanted))
            leaves += [rows[-1]] if src in wanted else []
            continue
        hidden, weight, bias = tensors[src.start:src.start + 3]
        h = hidden[where].detach()
        device, dtype, enabled = autocast
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            z = torch.nn.functional.linear(h, weight, bias)  # N x V, before the soft-cap
        if src in wanted:
            leaves.append(z.requires_grad_())
            heads.append((h, weight))
        cap = src.head.softcap
        rows.append((z if cap is None else torch.tanh(z / cap) * cap).float())
        if check and src.head.nonfinite_error is not None:
            src.head.check(rows[-1])
    return rows + [x[where] for x in tensors[plan.n_tensors:]], leaves, heads


def early_gradients(plan: RowPlan, tensors: Sequence[Tensor], wanted: list[Source], needs: Sequence[bool],
                     autocast):
    """The forward pass that also takes the gradients of the summed columns (upstream 1 at every position):
    the values, and per summed column the float32 gradients of the hidden states, weights and biases, by
    index into ``tensors`` (only fused heads are in ``wanted``)."""
    early: dict[int, dict[int, Tensor]] = {}
    for c in plan.summed:
        early[c] = {}
        for src in wanted:
            for k in range(src.start, src.start + 3):
                if needs[k]:
                    early[c][k] = torch.zeros_like(tensors[k], dtype=torch.float32)
    values, offset = None, 0
    for i, (chunk, targets) in enumerate(plan.chunks):
        where = plan.where(i)
        with torch.enable_grad():
            rows, leaves, heads = rows_with_leaves(plan, i, tensors, wanted, autocast, check=True)
            out = plan.row_fn(rows, targets)  # N, or N x K
            del rows
            columns = out if out.dim() == 2 else out[:, None]
            found = {c: torch.autograd.grad(columns[:, c].sum(), leaves, allow_unused=True,
                                            retain_graph=n + 1 < len(plan.summed))
                     if out.requires_grad else [None] * len(leaves) for n, c in enumerate(plan.summed)}
        # Outside the graph: projected inside it, the gradient would be kept by the weight's graph chunk by chunk.
        for c, grads in found.items():
            for src, g, (h, weight) in zip(wanted, grads, heads):
                if g is not None:
                    project(g, h, weight, where, src.start, early[c])
        if values is None:  # one buffer for every chunk's values, made before the chunks' big tensors come and go:
            # small tensors made between them kept the allocator from giving their memory back (RSS + 1.4 GiB)
            values = out.new_empty((sum(len(c) for c, _ in plan.chunks), *out.shape[1:]))
        values[offset:offset + len(chunk)] = out.detach()
        offset += len(chunk)
        del leaves, out, columns, found, heads  # free this chunk's rows and gradients before the next chunk's
    return values, early


def late_gradients(plan: RowPlan, tensors: Sequence[Tensor], wanted: list[Source], needs: Sequence[bool],
                    grad_values: Tensor, autocast) -> list[Tensor | None]:
    """The backward pass: each chunk's rows made again, their gradient for ``grad_values`` taken and written
    into the inputs' gradients (class docstring)."""
    grads: list[Tensor | None] = [None] * len(tensors)
    sums: dict[int, Tensor] = {}  # fused heads' gradients: hidden states by row, weight / bias summed over chunks
    for src in wanted:
        if src.head is None:
            grads[src.start] = torch.zeros_like(tensors[src.start])
            continue
        hidden, weight, bias = tensors[src.start:src.start + 3]
        if needs[src.start]:
            sums[src.start] = torch.zeros_like(hidden)
        for k, t in ((src.start + 1, weight), (src.start + 2, bias)):
            if needs[k]:
                sums[k] = torch.zeros_like(t, dtype=torch.float32)
    offset = 0
    for i, (chunk, targets) in enumerate(plan.chunks):
        where = plan.where(i)
        with torch.enable_grad():
            rows, leaves, heads = rows_with_leaves(plan, i, tensors, wanted, autocast)
            out = plan.row_fn(rows, targets)  # N
            del rows  # the rows that need no gradient (the teacher's) are not needed by the backward
            upstream = grad_values[offset:offset + len(chunk)]
            found = torch.autograd.grad(out, leaves, upstream, allow_unused=True) \
                if out.requires_grad else [None] * len(leaves)
        head_grads = iter(heads)
        for src, g in zip(wanted, found):
            if src.head is None:
                if g is not None:
                    grads[src.start][where] = g.to(grads[src.start].dtype)
                continue
            h, weight = next(head_grads)
            if g is not None:
                project(g, h, weight, where, src.start, sums)
        del leaves, out, found, heads  # free this chunk's rows and gradients before the next chunk's
        offset += len(chunk)
    for k, total in sums.items():
        grads[k] = total.to(tensors[k].dtype)
    return grads


def project(g: Tensor, h: Tensor, weight: Tensor, where, start: int, into: dict[int, Tensor]) -> None:
    """Write a chunk's pre-cap logits gradient ``g`` (``N x V``) through the head into the buffers ``into``
    has, by index of the head's tensors from ``start``: the hidden rows' z̄·W (``N x H``, in the buffer's
    dtype), the weight's z̄ᵀ·h and the bias's Σ z̄ (added, float32)."""
    if start in into:
        into[start][where] = (g @ weight.to(g.dtype)).to(into[start].dtype)  # N x H
    if start + 1 in into:
        into[start + 1].addmm_(g.t().float(), h.float())  # V x H, in place
    if start + 2 in into:
        into[start + 2] += g.float().sum(0)
