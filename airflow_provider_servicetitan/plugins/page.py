"""The health page: a static HTML shell, a script that polls the JSON API and renders it, a style sheet.

The page holds no data: the script fetches ``api/credentials`` (same origin, so the UI's ``_token``
cookie authenticates it) every ``REFRESH_SECONDS`` and builds the table with ``textContent`` and
``createElement`` only: nothing it receives is ever parsed as HTML. The API serves the page with a
Content-Security-Policy that allows no inline script and no other origin.
"""

# ruff: noqa: E501  (the page script and style are JavaScript and CSS sources, not Python)
from __future__ import annotations

__all__ = ["HTML", "REFRESH_SECONDS", "SCRIPT", "STYLE"]

REFRESH_SECONDS = 10

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ServiceTitan health</title>
<link rel="stylesheet" href="static/page.css">
<script src="static/page.js" defer></script>
</head>
<body>
<header>
  <h1>ServiceTitan health</h1>
  <p id="updated" aria-live="polite">Loading…</p>
</header>
<div id="banners" role="status"></div>
<main>
<table id="credentials">
<thead><tr>
  <th>Credential</th><th>Status</th><th>Circuit breaker</th><th>Token</th>
  <th>Last sync per resource</th><th>Open dead letters</th><th>Latest tasks</th><th>Actions</th>
</tr></thead>
<tbody></tbody>
</table>
<p id="empty" hidden>No ServiceTitan credential: add a connection of type ServiceTitan, or list connection ids in the
Variable <code>servicetitan_connections</code>.</p>
</main>
</body>
</html>
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #1a202c; background: #fff; font-size: 14px; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem 0; }
header { display: flex; gap: 1rem; align-items: baseline; }
#updated { color: #4a5568; margin: 0; }
.banner { padding: .5rem .75rem; margin: .5rem 0; border-radius: 4px; background: #fefcbf; border: 1px solid #d69e2e; }
.banner.error { background: #fed7d7; border-color: #c53030; }
.banner.ok { background: #c6f6d5; border-color: #2f855a; }
table#credentials { border-collapse: collapse; width: 100%; }
#credentials th, #credentials td { border: 1px solid #cbd5e0; padding: .4rem; vertical-align: top; text-align: left; }
#credentials th { background: #edf2f7; }
.badge { display: inline-block; padding: 0 .4rem; border-radius: 3px; font-weight: 600; }
.s-ok, .b-closed, .r-success, .r-recovered { background: #c6f6d5; }
.s-degraded, .b-half_open { background: #fefcbf; }
.s-needs_attention, .b-open, .r-failed, .r-interrupted { background: #fed7d7; }
.s-unknown, .b-unknown { background: #e2e8f0; }
.r-partial, .r-running, .r-queued, .r-deferred, .r-up_for_retry { background: #fefcbf; }
.r-skipped, .r-none { background: #e2e8f0; }
.r-upstream_failed { background: #fed7d7; }
.muted { color: #718096; }
.reason { white-space: pre-wrap; word-break: break-word; max-width: 22rem; }
table.inner { border-collapse: collapse; }
table.inner td { border: none; padding: 0 .4rem 0 0; }
button { margin: .1rem 0; cursor: pointer; }
input.minutes { width: 4rem; }
input.note { width: 12rem; }
.letter { border-top: 1px dashed #cbd5e0; padding-top: .2rem; margin-top: .2rem; }
"""

SCRIPT = (
    """"use strict";
(function () {
  const REFRESH_MS = """
    + str(REFRESH_SECONDS * 1000)
    + """;
  const api = (path) => new URL("api/" + path, document.baseURI).toString();
  let canEdit = false;
  let busy = false;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "className") node.className = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  const text = (value) => document.createTextNode(value === null || value === undefined ? "" : String(value));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    let s = Math.max(0, Math.round(Number(seconds)));
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }
  function when(iso) {
    if (!iso) return el("span", {className: "muted", text: "never"});
    const date = new Date(iso);
    const ago = (Date.now() - date.getTime()) / 1000;
    return el("time", {datetime: iso, title: iso, text: ago >= 0 ? duration(ago) + " ago" : iso});
  }
  const badge = (prefix, value, field) =>
    el("span", {className: "badge " + prefix + "-" + String(value), "data-field": field, text: String(value).replace("_", " ")});

  async function call(method, path, body) {
    const response = await fetch(api(path), {
      method: method,
      credentials: "same-origin",
      headers: {"Accept": "application/json", "Content-Type": "application/json"},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let payload = null;
    try { payload = await response.json(); } catch (e) { payload = null; }
    if (!response.ok) {
      const detail = payload && payload.detail ? (typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail)) : response.statusText;
      throw new Error(response.status + ": " + detail);
    }
    return payload;
  }

  function banner(kind, message) {
    document.getElementById("banners").appendChild(el("div", {className: "banner " + kind, text: message}));
  }

  async function act(label, method, path, body) {
    busy = true;
    document.getElementById("banners").replaceChildren();
    try {
      await call(method, path, body);
      banner("ok", label + ": done");
    } catch (error) {
      banner("error", label + " failed: " + error.message);
    } finally {
      busy = false;
      await refresh(true);
    }
  }

  function credentialCell(row) {
    const cell = el("td", {}, [el("strong", {text: row.conn_id, "data-field": "conn-id"})]);
    cell.appendChild(el("div", {className: "muted", text: "from " + row.sources.join(", ")}));
    if (row.problem) cell.appendChild(el("div", {className: "reason r-failed", text: row.problem}));
    return cell;
  }
  function statusCell(row) {
    const cell = el("td", {}, [row.status.status ? badge("s", row.status.status, "status")
      : el("span", {className: "badge s-unknown", "data-field": "status", text: "not recorded"})]);
    if (row.status.since) cell.appendChild(el("div", {}, [text("since "), when(row.status.since)]));
    if (row.status.reason) cell.appendChild(el("div", {className: "reason", "data-field": "reason", text: row.status.reason}));
    if (row.warehouse === "down") cell.appendChild(el("div", {className: "muted", text: "warehouse unreachable"}));
    return cell;
  }
  function breakerCell(row) {
    const b = row.breaker;
    const cell = el("td", {}, [badge("b", b.state, "breaker-state")]);
    if (row.redis === "down") cell.appendChild(el("div", {className: "muted", text: "Redis unreachable"}));
    else if (row.redis === "not_configured") cell.appendChild(el("div", {className: "muted", text: "no Redis: per process"}));
    if (b.failures_in_window !== null) {
      cell.appendChild(el("div", {"data-field": "failures", text: b.failures_in_window + " failures in " + duration(b.window_seconds)}));
    }
    if (b.admits_in_seconds !== null && b.state !== "closed") {
      cell.appendChild(el("div", {"data-field": "admits-in",
        text: b.admits_in_seconds > 0 ? "probe in " + duration(b.admits_in_seconds) : "admits a probe now"}));
    }
    return cell;
  }
  function tokenCell(row) {
    const t = row.token;
    if (t.cached === null) return el("td", {className: "muted", text: row.redis === "ok" ? "" : "unknown"});
    const cell = el("td", {}, [el("span", {"data-field": "token", text: t.cached ? "cached" : "not cached"})]);
    if (t.expires_in_seconds !== null) cell.appendChild(el("div", {text: "expires in " + duration(t.expires_in_seconds)}));
    if (t.rejected) cell.appendChild(el("div", {className: "badge s-needs_attention", text: "secret rejected"}));
    return cell;
  }
  function syncCell(row) {
    if (!row.syncs.length) return el("td", {className: "muted", text: row.warehouse === "down" ? "unknown" : "no sync yet"});
    const rows = row.syncs.map((s) => el("tr", {"data-resource": s.resource}, [
      el("td", {text: s.resource}),
      el("td", {}, [badge("r", s.status, "sync-status")]),
      el("td", {}, [when(s.finished_at || s.started_at)]),
      el("td", {text: s.records + " records" + (s.records_failed ? " (" + s.records_failed + " bad)" : "")}),
      el("td", {text: s.pages + (s.pages === 1 ? " page" : " pages")}),
    ]));
    return el("td", {}, [el("table", {className: "inner"}, [el("tbody", {}, rows)])]);
  }
  function deadLetterCell(row) {
    const d = row.dead_letters;
    const cell = el("td", {}, [el("strong", {"data-field": "dead-letters", text: String(d.open)}), text(" open")]);
    if (d.oldest) cell.appendChild(el("div", {}, [text("oldest "), when(d.oldest)]));
    if (d.sample_error) cell.appendChild(el("div", {className: "reason", "data-field": "sample-error", text: d.sample_error}));
    for (const letter of d.letters) {
      const box = el("div", {className: "letter", "data-dead-letter": letter.id}, [
        el("div", {className: "muted", text: "#" + letter.id + " " + letter.resource + (letter.record_id ? " " + letter.record_id : "") +
          ", " + letter.attempts + " attempts"}),
      ]);
      if (canEdit) {
        const note = el("input", {className: "note", type: "text", placeholder: "note (why)", "aria-label": "note for dead letter " + letter.id, maxlength: 2000});
        const button = el("button", {type: "button", "data-action": "mark-handled", text: "Mark handled"});
        button.addEventListener("click", () => {
          if (!note.value.trim()) { banner("error", "Write a note first: why does this record need no recovery?"); return; }
          act("Mark dead letter #" + letter.id + " handled", "POST", "dead-letters/" + encodeURIComponent(letter.id) + "/handled", {note: note.value});
        });
        box.appendChild(el("div", {}, [note, button]));
      }
      cell.appendChild(box);
    }
    return cell;
  }
  function taskCell(row) {
    if (!row.latest_tasks.length) return el("td", {className: "muted", text: "no run yet"});
    return el("td", {}, row.latest_tasks.map((t) => el("div", {}, [
      el("a", {href: t.ui_url, target: "_top", "data-field": "task-link", text: t.task_id.replace("credential.", "")}),
      text(" "), badge("r", t.state || "none", "task-state"), text(" "),
      el("a", {href: t.log_api_url, target: "_blank", rel: "noopener", text: "log"}),
    ])));
  }
  function actionCell(row) {
    if (!canEdit) return el("td", {className: "muted", text: "read only"});
    const id = encodeURIComponent(row.conn_id);
    const reset = el("button", {type: "button", "data-action": "reset-breaker", text: "Reset breaker"});
    reset.addEventListener("click", () => act("Reset breaker of " + row.conn_id, "POST", "credentials/" + id + "/breaker/reset", {}));
    const minutes = el("input", {className: "minutes", type: "number", min: 1, max: 1440, value: 30, "aria-label": "minutes"});
    const hold = el("button", {type: "button", "data-action": "hold-breaker", text: "Hold open"});
    hold.addEventListener("click", () => act("Hold breaker of " + row.conn_id + " open", "POST", "credentials/" + id + "/breaker/hold", {minutes: Number(minutes.value)}));
    const recover = el("button", {type: "button", "data-action": "recover", text: "Recover now"});
    recover.addEventListener("click", () => act("Recovery run of " + row.conn_id, "POST", "credentials/" + id + "/recover", {}));
    const usable = !row.problem && row.redis === "ok";
    reset.disabled = hold.disabled = !usable;
    return el("td", {}, [el("div", {}, [reset]), el("div", {}, [hold, text(" for "), minutes, text(" min")]), el("div", {}, [recover])]);
  }

  function render(data) {
    canEdit = Boolean(data.can_edit);
    const banners = document.getElementById("banners");
    banners.querySelectorAll(".state").forEach((node) => node.remove());
    if (data.redis === "down") banners.appendChild(el("div", {className: "banner error state", "data-banner": "redis-down",
      text: "Redis is unreachable: breaker and token state are unknown; breaker actions are disabled."}));
    if (data.warehouse === "down") banners.appendChild(el("div", {className: "banner error state", "data-banner": "warehouse-down",
      text: "The warehouse cannot be read: status, syncs and dead letters are unknown."}));
    const body = document.querySelector("#credentials tbody");
    body.replaceChildren(...data.credentials.map((row) => el("tr", {"data-credential": row.conn_id}, [
      credentialCell(row), statusCell(row), breakerCell(row), tokenCell(row), syncCell(row), deadLetterCell(row), taskCell(row), actionCell(row),
    ])));
    document.getElementById("empty").hidden = data.credentials.length > 0;
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ", refreshes every " + (REFRESH_MS / 1000) + " s";
  }

  function typing() {
    return Array.from(document.querySelectorAll("#credentials input.note")).some((input) => input.value || input === document.activeElement);
  }

  async function refresh(force) {
    if (busy || (!force && typing())) return;
    try {
      render(await call("GET", "credentials"));
    } catch (error) {
      document.getElementById("updated").textContent = "Could not load: " + error.message;
    }
  }

  refresh(true);
  setInterval(() => refresh(false), REFRESH_MS);
})();
"""
)
