// Shared by the console's pages: JSON calls scoped to the page's tenant, the live stream, small
// helpers. No framework: the pages are rendered on the server; this only refreshes and reacts.
"use strict";

const Aforo = (() => {
  const body = document.body;
  const tenant = body.dataset.tenant || "";
  const csrfHeader = body.dataset.csrfHeader || "X-Aforo-Console";
  const STATUSES = ["accepted", "duplicate", "rejected", "late", "unresolved"];

  function withTenant(url) {
    const u = new URL(url, location.origin);
    if (tenant && !u.searchParams.has("tenant")) u.searchParams.set("tenant", tenant);
    return u.pathname + u.search;
  }

  async function request(url, options) {
    const r = await fetch(withTenant(url), {credentials: "same-origin", ...options});
    const text = await r.text();
    const body = text ? JSON.parse(text) : null;
    if (!r.ok) {
      const err = new Error((body && body.message) || `HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  const getJSON = (url) => request(url, {headers: {Accept: "application/json"}});
  const postJSON = (url, payload) => request(url, {
    method: "POST", body: JSON.stringify(payload || {}),
    headers: {"Content-Type": "application/json", Accept: "application/json", [csrfHeader]: "1"},
  });

  // The live tail: one EventSource per page; `onEvent(status, message)` for every decided event,
  // `onState(live)` when the stream is positioned at the end of the topics (`ready`: every event
  // decided from then on arrives) or drops (EventSource reconnects by itself).
  function live(onEvent, onState) {
    const source = new EventSource(withTenant("/v1/events/stream"));
    source.addEventListener("ready", () => onState && onState(true));
    source.onerror = () => onState && onState(false);
    for (const status of STATUSES) {
      source.addEventListener(status, (e) => onEvent(status, JSON.parse(e.data)));
    }
    source.addEventListener("overflow", () => { source.close(); location.reload(); });
    return source;
  }

  // Calls fn once, ms after the first of a burst of calls: a steady stream of events refreshes
  // every ms, never starves.
  function soon(fn, ms) {
    let timer = null;
    return () => { if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms); };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // A "+" button that shows and hides the rows its aria-controls names.
  function expander(button) {
    button.addEventListener("click", () => {
      const open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", String(open));
      button.textContent = open ? "−" : "+";
      button.setAttribute("aria-label", button.getAttribute("aria-label").replace(open ? "Show" : "Hide", open ? "Hide" : "Show"));
      for (const id of button.getAttribute("aria-controls").trim().split(/\s+/)) {
        document.getElementById(id).hidden = !open;
      }
    });
  }

  function badge(status, reason) {
    return el("span", {class: `badge ${status}`}, status + (reason ? ` · ${reason.replaceAll("_", " ")}` : ""));
  }

  // Each cell of a table.stack is labelled with its column's header, which a phone shows beside the
  // value (console.css); rows and tables added later (the live stream, more events, a provenance)
  // are labelled as they come.
  function labelCells(table) {
    const heads = [...table.tHead.rows[0].cells].flatMap((th) => Array(th.colSpan).fill(th.textContent.trim()));
    for (const body of table.tBodies) {
      for (const row of body.rows) {
        let column = 0;
        for (const cell of row.cells) {
          if (cell.colSpan === 1 && heads[column]) cell.dataset.label = heads[column];
          column += cell.colSpan;
        }
      }
    }
  }
  const labelTables = () => document.querySelectorAll("table.stack").forEach(labelCells);
  labelTables();
  new MutationObserver(labelTables).observe(document.body, {childList: true, subtree: true});

  // Forms that apply on change; their submit buttons are for when scripts do not run.
  document.querySelectorAll("form[data-autosubmit] select, select[data-autosubmit-field]").forEach((s) =>
    s.addEventListener("change", () => s.form.submit()));
  document.querySelectorAll(".js-hide").forEach((b) => { b.hidden = true; });

  return {tenant, getJSON, postJSON, live, soon, el, badge, expander};
})();
