"""The local node's page (``GET /``): devices and the tasks they sent, in HTML.

Everything on it comes from devices (addresses, project ids, payloads, sprout
data) and is escaped with :func:`html.escape` (quotes too), so a payload holding
``<script>`` shows as text. No script, no external resource: the page works
offline and a Content-Security-Policy forbids scripts anyway.

Example:
    >>> page = render_page(node)      # str, a whole HTML document
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import Node

__all__ = ["CSP", "render_page"]

#: Sent with the page: nothing on it may run.
CSP = "default-src 'none'; style-src 'unsafe-inline'"

#: Tasks shown per device (the newest); /v1/devices/<address> has them all.
TASKS_SHOWN = 50

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
    "code{font-size:90%;word-break:break-all}"
)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) if t else ""


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f"<td><code>{escape(text)}</code></td>"


def render_page(node: Node) -> str:
    """The whole page for ``node``'s current store."""
    devices = node.devices()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>ioconnect local W3bstream node</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>ioconnect local W3bstream node</h1>",
        f"<p>{len(devices)} device(s). JSON: <code>/v1/devices</code>, "
        "<code>/v1/devices/&lt;address&gt;</code>, <code>/v1/task/&lt;taskID&gt;</code>.</p>",
        '<table id="devices"><tr><th>device</th><th>project</th><th>tasks</th>'
        "<th>last nonce</th><th>last received</th></tr>",
    ]
    for d in devices:
        parts.append(
            "<tr>"
            + _cell(d["address"])
            + _cell(d["projectID"])
            + f"<td>{int(d['tasks'])}</td>"
            + _cell(d["last_nonce"])
            + f"<td>{escape(_when(d['last_received']))}</td></tr>"
        )
    parts.append("</table>")
    for address in sorted({d["address"] for d in devices}):
        tasks = node.tasks_of(address)
        shown = tasks[-TASKS_SHOWN:]
        parts.append(f"<h2>{escape(address)}</h2>")
        if len(shown) < len(tasks):
            parts.append(f"<p>the newest {len(shown)} of {len(tasks)} tasks</p>")
        parts.append(
            '<table class="tasks"><tr><th>nonce</th><th>project</th><th>taskID</th>'
            "<th>payload</th></tr>"
        )
        for t in shown:
            parts.append(
                "<tr>"
                + _cell(t["nonce"])
                + _cell(t["projectID"])
                + _cell(t["taskID"])
                + _cell(t["payload"])
                + "</tr>"
            )
        parts.append("</table>")
    for address in node.sprout_devices():
        messages = node.messages_of(address)
        shown = messages[-TASKS_SHOWN:]
        parts.append(f"<h2>{escape(address)}: sprout messages ({len(messages)})</h2>")
        parts.append(
            '<table class="sprout"><tr><th>received</th><th>project</th><th>taskID</th>'
            "<th>data</th></tr>"
        )
        for m in shown:
            parts.append(
                f"<tr><td>{escape(_when(m['received']))}</td>"
                + _cell(m["projectID"])
                + _cell(m["taskID"])
                + _cell(m["data"])
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
