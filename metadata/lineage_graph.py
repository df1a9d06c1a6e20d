"""Pictures of a lineage graph: a standalone SVG, or an HTML page with the SVG and a table per node.

Pure Python (no Graphviz on these machines): nodes are placed in columns by their longest path
from a source, so data flows left to right, and within a column in the order they were created.
Artifacts are rounded boxes coloured by type, executions are dark rectangles; every node has a
tooltip (`<title>`) with its properties, which browsers show on hover.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping

from metadata.lineage import LineageGraph

NODE_WIDTH, NODE_HEIGHT = 190, 46
COLUMN_GAP, ROW_GAP = 70, 22
MARGIN = 20
_ARTIFACT_COLOURS = {
    "RawData": "#fde2b8", "Examples": "#fff2c2", "ExampleStatistics": "#e3f1d4", "Schema": "#e3f1d4",
    "ExampleAnomalies": "#e3f1d4", "IngestRejectedRows": "#f6d3d3", "RejectedRows": "#f6d3d3",
    "CleanedExamples": "#fff2c2", "TransformGraph": "#dbe8f7", "TransformedExamples": "#fff2c2",
    "Model": "#d9d2f0", "ModelEvaluation": "#d9d2f0", "ModelBlessing": "#d9d2f0", "PushedModel": "#c7b8ef",
    "PredictionLog": "#d4eef0", "DriftCheckResult": "#f0d4e8",
}


def _node_key(kind: str, node_id: int) -> str:
    return f"{kind}:{node_id}"


def layout(graph: LineageGraph) -> tuple[dict[str, tuple[float, float]], list[tuple[str, str, str]]]:
    """Node key -> (x, y) of its top-left corner, and the de-duplicated edges (from, to, name)."""
    nodes = [_node_key("artifact", i) for i in sorted(graph.artifacts)] + [_node_key("execution", i) for i in sorted(graph.executions)]
    present = set(nodes)
    edges = list(dict.fromkeys(
        (_node_key(a, b), _node_key(c, d), name) for a, b, c, d, name in graph.edges
        if _node_key(a, b) in present and _node_key(c, d) in present))
    parents: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target, _ in edges:
        parents[target].append(source)
    rank: dict[str, int] = {}

    def rank_of(node: str, trail: frozenset[str] = frozenset()) -> int:
        if node in rank:
            return rank[node]
        if node in trail:  # MLMD graphs are acyclic; guard anyway so a bad store cannot hang the CLI
            return 0
        value = 1 + max((rank_of(p, trail | {node}) for p in parents[node]), default=-1)
        rank[node] = value
        return value

    for node in nodes:
        rank_of(node)
    # A source other than the data (a schema, a log window) is drawn just before its first use.
    children: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target, _ in edges:
        children[source].append(target)
    for node in nodes:
        if not parents[node] and children[node]:
            rank[node] = max(0, min(rank[child] for child in children[node]) - 1)
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(rank[node], []).append(node)

    def created(node: str) -> tuple[int, str]:
        kind, _, node_id = node.partition(":")
        return (int(node_id), kind)

    positions: dict[str, tuple[float, float]] = {}
    for column, members in sorted(columns.items()):
        for row, node in enumerate(sorted(members, key=created)):
            positions[node] = (MARGIN + column * (NODE_WIDTH + COLUMN_GAP), MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    return positions, edges


def _label(graph: LineageGraph, node: str) -> tuple[str, str, str]:
    """(title line, detail line, tooltip) of a node."""
    kind, _, raw_id = node.partition(":")
    node_id = int(raw_id)
    if kind == "artifact":
        artifact = graph.artifacts[node_id]
        props = artifact.get("properties") or {}
        detail = Path(artifact.get("uri") or "").name or "-"
        if artifact["type"] == "PushedModel":
            detail = f"{props.get('model_name')}:{props.get('version')}"
        elif artifact["type"] == "DriftCheckResult":
            detail = "passed" if props.get("passed") else "FAILED " + ",".join(props.get("failed_checks") or [])
        tooltip = json.dumps({"id": node_id, "type": artifact["type"], "uri": artifact.get("uri"), **props},
                             default=str, indent=1)[:2000]
        return f"{artifact['type']} #{node_id}", detail, tooltip
    execution = graph.executions[node_id]
    run = (execution.get("run") or {}).get("name", "")
    tooltip = json.dumps({"id": node_id, "type": execution["type"], "state": execution.get("state"), "run": run,
                          "parameters": (execution.get("properties") or {}).get("parameters")}, default=str, indent=1)[:2000]
    return f"{execution['type']} #{node_id}", f"{execution.get('state', '')} {run}"[:34], tooltip


def render_svg(graph: LineageGraph, title: str = "lineage") -> str:
    """A standalone SVG document of the graph."""
    positions, edges = layout(graph)
    width = max((x for x, _ in positions.values()), default=0) + NODE_WIDTH + 2 * MARGIN
    height = max((y for _, y in positions.values()), default=0) + NODE_HEIGHT + 2 * MARGIN + 20
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11" role="img" aria-label="{e(title)}">',
        f"<title>{e(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
    ]
    for source, target, name in edges:
        x1, y1 = positions[source]
        x2, y2 = positions[target]
        start = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2)
        end = (x2, y2 + NODE_HEIGHT / 2)
        middle = (start[0] + end[0]) / 2
        parts.append(f'<path class="edge" d="M{start[0]:.1f},{start[1]:.1f} C{middle:.1f},{start[1]:.1f} {middle:.1f},{end[1]:.1f} '
                     f'{end[0]:.1f},{end[1]:.1f}" fill="none" stroke="#888" stroke-width="1.2" marker-end="url(#arrow)">'
                     f"<title>{e(name)}</title></path>")
    for node, (x, y) in positions.items():
        kind = node.partition(":")[0]
        heading, detail, tooltip = _label(graph, node)
        if kind == "artifact":
            fill = _ARTIFACT_COLOURS.get(graph.artifacts[int(node.partition(':')[2])]["type"], "#eeeeee")
            shape = f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="12" fill="{fill}" stroke="#777"/>'
            colour = "#222"
        else:
            failed = graph.executions[int(node.partition(':')[2])].get("state") == "FAILED"
            fill = "#a31515" if failed else "#37474f"
            shape = f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" fill="{fill}" stroke="#222"/>'
            colour = "#fff"
        parts.append(
            f'<g class="node {kind}" id="{e(node.replace(":", "-"))}"><title>{e(tooltip)}</title>{shape}'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}" fill="{colour}" font-weight="bold">{e(heading[:26])}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 34:.0f}" fill="{colour}">{e(detail[:28])}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(graph: LineageGraph, title: str, summary: Mapping[str, Any] | None = None) -> str:
    """An HTML page: the SVG, then every node's properties (for reading, searching and printing)."""
    e = html.escape
    rows = []
    for artifact in sorted(graph.artifacts.values(), key=lambda a: a["id"]):
        rows.append(f"<tr><td>artifact {artifact['id']}</td><td>{e(artifact['type'])}</td><td>{e(str(artifact.get('uri')))}</td>"
                    f"<td><code>{e(json.dumps(artifact.get('properties') or {}, default=str, sort_keys=True))}</code></td></tr>")
    for execution in sorted(graph.executions.values(), key=lambda x: x["id"]):
        props = execution.get("properties") or {}
        rows.append(f"<tr><td>execution {execution['id']}</td><td>{e(execution['type'])} ({e(execution.get('state', ''))})</td>"
                    f"<td>{e((execution.get('run') or {}).get('name', ''))}</td>"
                    f"<td><code>{e(json.dumps({k: props.get(k) for k in ('parameters', 'code_version')}, default=str))}</code></td></tr>")
    summary_html = ""
    if summary:
        summary_html = "<table>" + "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary.items()) + "</table>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}"
        "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;"
        "vertical-align:top}code{white-space:pre-wrap;word-break:break-all}.graph{overflow-x:auto}</style></head><body>"
        f"<h1>{e(title)}</h1>{summary_html}<div class=\"graph\">{render_svg(graph, title)}</div>"
        "<h2>Nodes</h2><table><tr><th>node</th><th>type</th><th>uri / run</th><th>properties</th></tr>"
        + "".join(rows) + "</table></body></html>\n"
    )
