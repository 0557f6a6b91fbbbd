// Live events: rows arrive from the SSE tail (filtered by the status and source chosen), can be
// paused and resumed (held back while paused, none lost), and open an event's provenance in a
// dialog. The counters are re-read from the ledger shortly after events arrive.
"use strict";

(() => {
  const MAX_ROWS = 500;
  const rows = document.getElementById("event-rows");
  const status = document.getElementById("f-status");
  const source = document.getElementById("f-source");
  const pause = document.getElementById("pause");
  const state = document.getElementById("live-state");
  const dialog = document.getElementById("provenance");
  const dialogBody = document.getElementById("provenance-body");
  const allTenants = !Aforo.tenant;
  let paused = false;
  let held = [];

  function cell(content, cls) { return Aforo.el("td", {class: cls}, content); }

  function row(message) {
    const e = message.event || {};
    const billing = message.billing || {};
    const time = (e.time || "").replace("T", " ").replace(/\.\d+/, "").replace("Z", "").slice(0, 19);
    const when = Aforo.el("td", {class: "num"}, Aforo.el("span", {class: "hide-narrow"}, time.slice(0, 11)),
                          time.slice(11));
    const open = e.id === undefined || e.source === undefined ? Aforo.el("span", {class: "muted"}, "no id")
      : Aforo.el("button", {class: "open", type: "button", "data-source": e.source, "data-id": e.id,
                            "data-tenant": e.tenantid}, String(e.id));
    const tr = Aforo.el("tr", {class: "event-row fresh", "data-status": message.status, "data-source": e.source || ""},
      when, allTenants ? cell(e.tenantid || "", "hide-narrow") : null, cell(e.source || "–"),
      cell(e.type || "–", "hide-narrow"),
      cell(billing.customer || e.subject || "–", "hide-narrow"), cell(Aforo.badge(message.status, message.reason)),
      cell((message.provenance || {}).tier || "", "hide-narrow"), cell(open));
    return tr;
  }

  function wanted(message) {
    const e = message.event || {};
    return (!status.value || message.status === status.value) && (!source.value || e.source === source.value);
  }

  function show(messages) {
    const empty = rows.querySelector(".empty-row");
    if (empty && messages.length) empty.remove();
    for (const m of messages) rows.prepend(row(m));
    while (rows.rows.length > MAX_ROWS) rows.lastElementChild.remove();
  }

  const counters = Aforo.soon(async () => {
    try {
      const c = await Aforo.getJSON("/v1/events/counters");
      document.querySelector('[data-counter="events"]').textContent = c.events;
      document.querySelector('[data-counter="duplicates"]').textContent = c.duplicates;
      document.querySelector('[data-counter="leakage"]').textContent =
        c.leakage_prevented.map((m) => m.display).join(", ") || "0";
    } catch (err) { /* the next event tries again */ }
  }, 1500);

  Aforo.live((kind, message) => {
    counters();
    if (!wanted(message)) return;
    if (paused) { held.push(message); pause.textContent = `Resume (${held.length} waiting)`; return; }
    show([message]);
  }, (open) => {
    state.className = `live-state ${open ? "on" : "off"}`;
    state.textContent = open ? (paused ? "paused" : "live") : "reconnecting…";
  });

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    state.textContent = paused ? "paused" : "live";
    if (!paused) { show(held); held = []; }
  });

  async function openProvenance(button) {
    const params = new URLSearchParams({source: button.dataset.source, id: button.dataset.id, fragment: "1"});
    if (button.dataset.tenant) params.set("tenant", button.dataset.tenant);
    dialogBody.replaceChildren(Aforo.el("p", {}, "Loading…"));
    dialog.showModal();
    const r = await fetch(`/events/view?${params}`, {credentials: "same-origin"});
    if (r.ok) {
      dialogBody.innerHTML = await r.text();  // rendered (and escaped) by the server's template
    } else {
      dialogBody.replaceChildren(Aforo.el("p", {class: "error"}, r.status === 404
        ? "Not in the ledger yet: events appear once the pipeline has written them." : `Error ${r.status}`));
    }
    document.getElementById("provenance-close").focus();
  }

  rows.addEventListener("click", (e) => {
    const button = e.target.closest("button.open");
    if (button) openProvenance(button);
  });
  document.getElementById("provenance-close").addEventListener("click", () => dialog.close());
})();
