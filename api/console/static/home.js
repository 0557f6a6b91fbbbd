// Home: the revenue tiles. Refreshed every 60 s and shortly after events are decided (live
// stream). Each tile says how old its figures are; past 30 s, when newer events have been
// decided since or a refresh failed, it says its data is stale.
"use strict";

(() => {
  const REFRESH_MS = 60_000;
  const STALE_S = 30;
  const KEYS = ["today", "period_to_date", "projected"];
  const charts = new Map(); // "USD/today" -> Chart
  let data = JSON.parse(document.getElementById("summary-data").textContent);
  let receivedAt = Date.now();
  let refreshFailed = false;
  let decidedSince = 0; // events decided since the figures were fetched

  function sparkValues(points) {
    return points.map((p) => (p.amount === null ? null : Number(p.amount)));  // drawing only
  }

  function drawSpark(canvas, points) {
    const labels = points.map((p) => p.at.slice(11, 16));
    return new Chart(canvas, {
      type: "line",
      data: {labels, datasets: [{data: sparkValues(points), borderColor: "#1d4ed8", borderWidth: 2,
        backgroundColor: "rgba(29, 78, 216, .12)", fill: true, pointRadius: 0, tension: .25, spanGaps: false}]},
      options: {responsive: true, maintainAspectRatio: false, animation: false,
        plugins: {legend: {display: false}, tooltip: {enabled: true, intersect: false}},
        scales: {x: {display: false}, y: {display: false, beginAtZero: true}}},
    });
  }

  function compareText(tile, key) {
    if (key === "projected" || !tile.compared_with) return null;
    const what = key === "today" ? "yesterday at this time" : "last period at this point";
    const frag = document.createDocumentFragment();
    if (tile.change_percent !== null) {
      const up = !tile.change_percent.startsWith("-");
      frag.append(Aforo.el("span", {class: up ? "up" : "down"}, `${up ? "+" : ""}${tile.change_percent}%`), " ");
    }
    frag.append(`vs ${tile.compared_with.display} ${what}`);
    return frag;
  }

  function render() {
    const rows = new Set([...document.querySelectorAll("[data-currency]")].map((r) => r.dataset.currency));
    const fresh = new Set(data.currencies.map((c) => c.currency));
    if (rows.size !== fresh.size || [...fresh].some((c) => !rows.has(c))) {
      location.reload(); // a currency appeared or went: the server renders the new layout
      return;
    }
    document.getElementById("period-day").textContent = `day ${data.day} of ${data.days}`;
    for (const c of data.currencies) {
      const row = document.querySelector(`[data-currency="${c.currency}"]`);
      for (const key of KEYS) {
        const tile = row.querySelector(`[data-tile="${key}"]`);
        tile.querySelector("[data-value]").textContent = c[key].value.display;
        const compare = compareText(c[key], key);
        if (compare) tile.querySelector("[data-compare]").replaceChildren(compare);
        tile.querySelector("[data-asof]").textContent = `as of ${data.as_of.slice(11, 19)} UTC`;
        const id = `${c.currency}/${key}`;
        const chart = charts.get(id);
        if (chart) {
          chart.data.labels = c[key].sparkline.map((p) => p.at.slice(11, 16));
          chart.data.datasets[0].data = sparkValues(c[key].sparkline);
          chart.update();
        } else {
          charts.set(id, drawSpark(tile.querySelector("[data-spark]"), c[key].sparkline));
        }
      }
    }
    markStale();
  }

  function markStale() {
    const age = Math.floor((Date.now() - receivedAt) / 1000);
    const stale = age > STALE_S && (refreshFailed || decidedSince > 0);
    const why = refreshFailed ? "the last refresh failed" : `${decidedSince} event(s) decided since`;
    for (const badge of document.querySelectorAll("[data-stale]")) {
      badge.hidden = !stale;
      badge.textContent = stale ? `Stale: data is ${age} s old (${why})` : "";
    }
  }

  async function refresh() {
    try {
      data = await Aforo.getJSON("/v1/revenue/summary");
      receivedAt = Date.now();
      refreshFailed = false;
      decidedSince = 0;
      render();
    } catch (err) {
      refreshFailed = true;
      markStale();
    }
  }

  render();
  setInterval(refresh, REFRESH_MS);
  setInterval(markStale, 1000);
  const soon = Aforo.soon(refresh, 3000);
  Aforo.live(() => { decidedSince += 1; soon(); });
})();
