"""The dry-run table: per local layer its shape, aux net, parameters and MACs, then the model's totals."""

from __future__ import annotations

from collections.abc import Sequence

from auglocal.engine.models.base import LayeredModel
from auglocal.engine.planning.costs import HeadCost, LayerCost, cost_totals, head_cost
from auglocal.engine.planning.mac_conventions import DESCRIPTIONS, ENGINE
from auglocal.engine.planning.plan import format_ids

HEADERS = ("layer", "width", "size", "selected", "aux net", "params", "aux params", "MMACs", "aux MMACs")
TEXT_COLUMNS = (3, 4)    # left-aligned; everything else is a number, right-aligned
SHRINKABLE = (4, 3)      # when the table is too wide: truncate the aux net notation first, then the selection
MIN_TEXT = 10


def _mega(macs: int) -> str:
    return f"{macs / 1e6:.2f}"


def _row(c: LayerCost) -> list[str]:
    if c.top:
        return [str(c.index), str(c.width), str(c.spatial), "-", "top: global loss", f"{c.primary_params:,}",
                "-", _mega(c.primary_macs), "-"]
    selected = ",".join(str(j) for j in c.selected) or "-"
    return [str(c.index), str(c.width), str(c.spatial), selected, c.notation or "-", f"{c.primary_params:,}",
            f"{c.aux_params:,}", _mega(c.primary_macs), _mega(c.aux_macs)]


def _fit(rows: list[list[str]], max_width: int) -> list[int]:
    """Column widths that fit `max_width`, shrinking the text columns if needed (cells are cut with '~')."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    for col in SHRINKABLE:
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        if excess > 0:
            widths[col] = max(MIN_TEXT, widths[col] - excess)
    return widths


def _line(cells: list[str], widths: list[int]) -> str:
    out = []
    for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
        if len(cell) > w:
            cell = cell[: w - 1] + "~"
        out.append(cell.ljust(w) if i in TEXT_COLUMNS else cell.rjust(w))
    return "  ".join(out).rstrip()


def format_plan_table(model: LayeredModel, costs: Sequence[LayerCost], head: HeadCost | None = None,
                      title: str | None = None, max_width: int = 110, macs: str = ENGINE) -> str:
    """Human-readable dry run of a model under a rule, for `--dry-run` and reports.

    One row per local layer (index, width, spatial size, the layers its aux net copies, the aux net in the
    paper's notation, parameters and forward MACs per image of layer and aux net), a row for the head, and
    the totals. Layers of the global top group are marked "top: global loss". `head` is counted from the
    model when not given. Fits `max_width` columns by cutting long notations. `macs` names the convention the
    costs were counted under (mac_conventions.py); the table says which it is.
    """
    if len(costs) != model.num_layers:
        raise ValueError(f"{len(costs)} layer costs for {model.name} with {model.num_layers} local layers; "
                         "pass the list layer_costs(model, aux_nets) returns")
    head = head_cost(model, macs=macs) if head is None else head
    totals = cost_totals(costs, head)
    top_ids = [c.index for c in costs if c.top]
    n_aux = len(costs) - len(top_ids)
    rows = [list(HEADERS)] + [_row(c) for c in costs]
    rows.append(["head", "", "", "-", "classifier head", f"{head.params:,}", "-", _mega(head.macs), "-"])
    widths = _fit(rows, max_width)

    lines = [title] if title else []
    size = model.input_size
    lines.append(f"{model.name}: {model.num_layers} local layers at input {size}x{size}, "
                 f"{n_aux} with an aux net")
    lines.append(f"top group (global loss): layers {format_ids(top_ids)} + head")
    header = _line(rows[0], widths)
    rule = "-" * len(header)
    lines += [header, rule] + [_line(r, widths) for r in rows[1:]] + [rule]
    lines.append(f"total MACs: primary {totals.primary_macs / 1e9:.3f} G + aux {totals.aux_macs / 1e9:.3f} G "
                 f"= {totals.total_macs / 1e9:.3f} G per image (forward)")
    lines.append(DESCRIPTIONS[macs])
    lines.append(f"total params: primary {totals.primary_params:,} + aux {totals.aux_params:,} "
                 f"= {totals.total_params:,}")
    return "\n".join(lines)
