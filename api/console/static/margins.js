// Margins: expand a customer into its metrics; sort by any column (margin % ascending brings
// negative margins to the top), or, on a phone, where the header row is not shown, with the
// "Sort by" select. Each customer is a <tbody>, so its metric rows move with it.
"use strict";

(() => {
  const table = document.getElementById("margins");
  if (!table) return;
  table.querySelectorAll("button.expand").forEach(Aforo.expander);
  const numeric = new Set(["events", "revenue", "cost", "margin", "margin_percent"]);
  const sortBy = document.getElementById("sort-by");
  let current = null;

  function sort(key, ascending) {
    current = {key, ascending};
    const value = (tbody) => {
      const raw = tbody.dataset[key] ?? "";
      if (!numeric.has(key)) return raw;
      return raw === "" ? Infinity : Number(raw);  // ordering only; the figures shown are the server's
    };
    const bodies = [...table.tBodies].sort((a, b) => {
      const x = value(a), y = value(b);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    table.append(...bodies);
    for (const th of table.querySelectorAll("th[aria-sort]")) th.removeAttribute("aria-sort");
    table.querySelector(`button.sort[data-key="${key}"]`).closest("th")
      .setAttribute("aria-sort", ascending ? "ascending" : "descending");
    // the select says the order the header chose, or none of its own (events, tenant: wide screens')
    const chosen = `${key} ${ascending ? "asc" : "desc"}`;
    sortBy.value = [...sortBy.options].some((o) => o.value === chosen) ? chosen : "";
  }

  for (const button of table.querySelectorAll("button.sort")) {
    button.addEventListener("click", () => {
      const key = button.dataset.key;
      sort(key, current && current.key === key ? !current.ascending : (key === "margin_percent" || !numeric.has(key)));
    });
  }
  sortBy.addEventListener("change", () => {
    const [key, direction] = sortBy.value.split(" ");
    sort(key, direction === "asc");
  });
  document.getElementById("sort-pick").hidden = false;
})();
