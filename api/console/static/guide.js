// Integration guide: copy buttons; "send a test event" sends a real event, then the verification
// panel polls the ledger for its terminal status; any event can be checked by source and id.
"use strict";

(() => {
  const statusLine = document.getElementById("verify-status");
  const facts = document.getElementById("verify-facts");
  const POLL_MS = 1000;
  let polling = null;

  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (err) {
        button.textContent = "Select and copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }

  function showFacts(pairs) {
    facts.replaceChildren(...pairs.flatMap(([k, v]) => [Aforo.el("dt", {}, k), Aforo.el("dd", {}, v)]));
    facts.hidden = false;
  }

  function watch(source, id, sentAt) {
    clearTimeout(polling);
    const started = Date.now();
    const path = `/v1/events/${source.split("/").map(encodeURIComponent).join("/")}/${encodeURIComponent(id)}`;
    const poll = async () => {
      try {
        const e = await Aforo.getJSON(path);
        const r = e.records[e.records.length - 1];
        statusLine.replaceChildren("Terminal status: ", Aforo.badge(e.status, e.reason),
          ` after ${((Date.now() - started) / 1000).toFixed(1)} s`);
        statusLine.dataset.status = e.status;
        const link = Aforo.el("a", {href: `/events/view?${new URLSearchParams({source, id, ...(Aforo.tenant ? {tenant: Aforo.tenant} : {})})}`},
          "open its provenance");
        showFacts([["Event", `${source} / ${id}`], ["Customer", r.customer || "–"], ["Tier", r.tier || "–"],
                   ["Route", r.route], ["Validation hash", r.validation_hash], ["Provenance", link]]);
      } catch (err) {
        if (err.status !== 404) { statusLine.textContent = `Cannot read the ledger: ${err.message}`; return; }
        statusLine.textContent = `Sent${sentAt ? ` at ${sentAt}` : ""}; waiting for the pipeline… ` +
          `(${Math.round((Date.now() - started) / 1000)} s)`;
        polling = setTimeout(poll, POLL_MS);
      }
    };
    poll();
  }

  const send = document.getElementById("send-test");
  if (send) {
    send.addEventListener("click", async () => {
      send.disabled = true;
      statusLine.textContent = "Sending…";
      delete statusLine.dataset.status;
      facts.hidden = true;
      try {
        const sent = await Aforo.postJSON("/v1/guide/test-event");
        showFacts([["Event", `${sent.source} / ${sent.id}`], ["Raw record", `partition ${sent.partition} offset ${sent.offset}`]]);
        watch(sent.source, sent.id, sent.received_at);
      } catch (err) {
        statusLine.textContent = `Not sent: ${err.message}`;
      } finally {
        send.disabled = false;
      }
    });
  }

  document.getElementById("check-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    statusLine.textContent = "Looking it up…";
    watch(form.get("source").trim(), form.get("id").trim(), null);
  });
})();
