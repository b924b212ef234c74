"""The benchmark's result (:func:`~alexnet.bench.benchmark.run_benchmark`) as a table in the terminal and as the
README's block; both read the JSON-ready result, so a kept ``results.json`` can be shown again."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..runtime.machine import describe_machine

__all__ = ["START", "END", "best_rows", "format_table", "markdown_report", "update_readme", "write_block"]

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
_GOALS = {("inference", 64): 2.5, ("inference", 1): 2.0, ("train", 64): 2.5}  # the project's targets
_HEADER = ["phase", "batch", "mode", "precision", "images/s", "vs baseline (rounds)", "GFLOP/s", "% of peak", "setup s"]


def best_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The fastest of our modes for each phase and batch size."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in result["rows"]:
        if r["model"] != result["model"]:
            continue
        key = (r["phase"], r["batch_size"])
        if key not in best or r["ratio_to_baseline"] > best[key]["ratio_to_baseline"]:
            best[key] = r
    return list(best.values())


def _ratio(r: dict[str, Any]) -> str:
    """The median ratio, then the lowest and highest round's."""
    spread = r.get("ratio_spread")
    return f"{r['ratio_to_baseline']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _cells(r: dict[str, Any]) -> list[str]:
    pct = "" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.0f}%"
    setup = f"{r['setup_s']:.1f}" if r["setup_s"] >= 0.05 else ""
    return [
        r["phase"],
        str(r["batch_size"]),
        r["mode"],
        r["precision"],
        f"{r['images_per_s']:.1f}",
        _ratio(r),
        f"{r['gflops']:.0f}",
        pct,
        setup,
    ]


def _sorted_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    order = {"inference": 0, "train": 1}
    return sorted(result["rows"], key=lambda r: (order[r["phase"]], -r["batch_size"], r["model"] == result["model"]))


def _method(result: dict[str, Any]) -> str:
    rounds = f"in {result['rounds']} rounds " if result.get("rounds") else ""
    where = (
        ", in a separate process with the default allocator (the `+malloc` rows: the baseline in the benchmark's "
        "process, with the allocator tuning our modes get)"
        if result["machine"].get("allocator_tuned")
        else ""
    )
    return (
        f"Baseline: torchvision's `alexnet`, eager fp32{where}. Each mode is timed {rounds}alternating with the "
        "baseline at the same phase and batch size; a round's ratio divides the mean of the two baseline "
        "measurements either side by the mode's. Shown: the median ratio (the lowest and highest round's)."
    )


def format_table(result: dict[str, Any]) -> Any:
    """A rich renderable: the table, the machine, the skipped modes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
    unit = "GFLOP/s (int8: GOP/s)" if "int8" in result["peak_gflops"] else "GFLOP/s"
    table = Table(title=f"{result['model']} vs torchvision alexnet (eager fp32) | matmul peak {unit}: {peaks}")
    for i, h in enumerate(_HEADER):
        table.add_column(h, justify="right" if i >= 4 or i == 1 else "left")
    best = {id(r) for r in best_rows(result)}
    previous = None
    for r in _sorted_rows(result):
        if previous is not None and (r["phase"], r["batch_size"]) != previous:
            table.add_section()
        previous = (r["phase"], r["batch_size"])
        table.add_row(
            *_cells(r), style="bold green" if id(r) in best else ("dim" if r["model"] != result["model"] else None)
        )
    parts: list[Any] = [table, *(Text(line[2:]) for line in _int8_lines(result) + _auto_lines(result))]
    parts.append(Text(f"{_machine_class(result)}: {describe_machine(result['machine'])}", style="dim"))
    for s in result["skipped"]:
        parts.append(Text(f"skipped {s['phase']} {s['mode']} (batch {s['batch_size']}): {s['reason']}", style="yellow"))
    return Group(*parts)


def markdown_report(result: dict[str, Any]) -> str:
    """The README block: machine, peaks, method, goals reached, the full table, skipped modes."""
    m = result["machine"]
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["peak_gflops"].items())
    full = " --full" if result.get("full") else ""
    lines = [
        f"Measured {m['date']} by `alexnet benchmark --model {result['model']}{full}` on {describe_machine(m)} "
        f"(machine class: {_machine_class(result)}).",
        f"Matmul peak (median): {peaks} GFLOP/s{' (int8: GOP/s)' if 'int8' in result['peak_gflops'] else ''}. "
        f"{_method(result)}",
        "",
    ]
    for r in sorted(best_rows(result), key=lambda r: (r["phase"], -r["batch_size"])):
        goal = _GOALS.get((r["phase"], r["batch_size"]))
        target = f" (goal {goal}x: {'met' if r['ratio_to_baseline'] >= goal else 'not met'})" if goal else ""
        pct = f", {r['pct_of_peak']:.0f}% of the {r['precision']} peak" if r["pct_of_peak"] is not None else ""
        spread = r.get("ratio_spread")
        rounds = f" (rounds {spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
        lines.append(
            f"- {r['phase']}, batch {r['batch_size']}: **{r['ratio_to_baseline']:.2f}x**{rounds} with `{r['mode']}` "
            f"({r['images_per_s']:.1f} images/s{pct}){target}"
        )
    lines += _int8_lines(result) + _auto_lines(result)
    lines += ["", "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in _sorted_rows(result)]
    if result["skipped"]:
        lines.append("")
        lines += [
            f"Skipped: {s['phase']} `{s['mode']}` (batch {s['batch_size']}): {s['reason']}" for s in result["skipped"]
        ]
    return "\n".join(lines)


def _int8_lines(result: dict[str, Any]) -> list[str]:
    """Each int8 row against the fastest row of another precision at the same batch size: the quotient of
    their ratios to the baseline."""
    rows = [r for r in result["rows"] if r["model"] == result["model"] and r["phase"] == "inference"]
    lines = []
    for r in sorted((r for r in rows if r["precision"] == "int8"), key=lambda r: (-r["batch_size"], r["mode"])):
        others = [o for o in rows if o["batch_size"] == r["batch_size"] and o["precision"] != "int8"]
        if others:
            o = max(others, key=lambda o: o["ratio_to_baseline"])
            ratio = r["ratio_to_baseline"] / o["ratio_to_baseline"]
            lines.append(f"- int8, batch {r['batch_size']}: `{r['mode']}` is {ratio:.2f}x `{o['mode']}`")
    return lines


def _auto_lines(result: dict[str, Any]) -> list[str]:
    """What ``--precision auto`` picks at each phase and batch size, against the best row there."""
    lines = []
    for a in result.get("auto", []):
        share = f": {a['of_best']:.0%} of the best row's ratio (`{a['best_mode']}`)" if "of_best" in a else ""
        lines.append(f"- `auto` at {a['phase']} batch {a['batch_size']}: `{a['mode']}`{share}")
    return lines


def _machine_class(result: dict[str, Any]) -> str:
    return result.get("machine_class") or "unknown class"


def write_block(path: str | os.PathLike, start: str, end: str, body: str, *, heading: str | None = None) -> bool:
    """Replace what stands between the ``start`` and ``end`` markers of ``path`` by ``body`` (written
    atomically); without the markers, append a ``heading`` section holding them, or (no heading) leave the
    file alone and return False."""
    from ..files import atomic_write_bytes

    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    elif heading is not None:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"## {heading}\n\n{block}\n"
    else:
        return False
    atomic_write_bytes(path, text.encode())
    return True


def update_readme(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Replace the block between the bench markers in ``path`` (appending a section if it has none)."""
    write_block(path, START, END, markdown_report(result), heading="Benchmark")
