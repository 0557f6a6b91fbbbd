// An invoice: each usage line expands into the events behind it; "Show more events" pages through
// the rest from /v1/invoices/{number}/lines/{n}/events. Amounts arrive as exact strings and are
// shown as they are: no arithmetic here.
"use strict";

(() => {
  const table = document.getElementById("invoice-lines");
  if (!table) return;
  const PAGE = 50;

  table.querySelectorAll("button.expand").forEach(Aforo.expander);

  // "0.0020" -> "0.002" (the server writes plain decimals, never "5E-7")
  const exact = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s) || "0";
  const time = (t) => (t ? t.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|[+-]\d\d:\d\d)$/, "").slice(0, 19) : "–");

  function row(e, provenance) {
    const td = (cls, ...c) => Aforo.el("td", {class: cls}, ...c);
    let id = e.event_id || "–";
    if (provenance && e.source && e.event_id) {
      const params = new URLSearchParams({source: e.source, id: e.event_id, tenant: document.body.dataset.tenant});
      id = Aforo.el("a", {href: `/events/view?${params}`}, e.event_id);
    }
    const note = (e.source || "") + (e.adjusts_period ? ` · adjusts ${e.adjusts_period}` : "");
    return Aforo.el("tr", {}, td("num", time(e.event_time)),
      td(null, id, " ", Aforo.el("span", {class: "name muted"}, note)),
      td("hide-narrow", Aforo.el("code", {}, `${e.raw_topic_id}/${e.raw_partition}/${e.raw_offset}`)),
      td(null, Aforo.el("code", {class: "hash", "data-validation-hash": ""}, e.validation_hash)),
      td("num", exact(e.revenue)));
  }

  for (const more of table.querySelectorAll("button.more")) {
    const cell = more.closest("td");
    const rows = cell.querySelector("table.line-events tbody");
    const shown = cell.querySelector("[data-shown]");
    more.addEventListener("click", async () => {
      more.disabled = true;
      const url = new URL(more.dataset.url, location.origin);
      url.searchParams.set("offset", more.dataset.offset);
      url.searchParams.set("limit", PAGE);
      try {
        const page = await Aforo.getJSON(url.pathname + url.search);
        rows.append(...page.items.map((e) => row(e, more.dataset.provenance)));
        shown.textContent = `${rows.rows.length} of ${page.events} shown`;
        if (page.next_offset === null) more.remove();
        else more.dataset.offset = page.next_offset;
      } catch (err) {
        shown.textContent = `Could not load more events: ${err.message}`;
      } finally {
        more.disabled = false;
      }
    });
  }
})();
