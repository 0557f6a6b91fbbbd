// Unit health: per tiered charge, a histogram of customers by period usage on a linear axis,
// with the plan's tier thresholds drawn as dashed vertical lines.
"use strict";

(() => {
  const data = JSON.parse(document.getElementById("health-data").textContent);

  const thresholds = {
    id: "thresholds",
    afterDatasetsDraw(chart, _args, options) {
      const {ctx, chartArea, scales} = chart;
      ctx.save();
      ctx.strokeStyle = "#b91c1c";
      ctx.fillStyle = "#7f1d1d";
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 2;
      ctx.font = "12px system-ui, sans-serif";
      for (const [i, value] of options.values.entries()) {
        const x = scales.x.getPixelForValue(value);
        if (x < chartArea.left || x > chartArea.right) continue;
        ctx.beginPath();
        ctx.moveTo(x, chartArea.top);
        ctx.lineTo(x, chartArea.bottom);
        ctx.stroke();
        const label = `tier ${i + 1} ≤ ${value}`;
        const width = ctx.measureText(label).width;
        const left = x + 4 + width > chartArea.right ? x - 4 - width : x + 4;  // keep it inside the chart
        ctx.fillText(label, left, chartArea.top + 12 + 14 * (i % 2));
      }
      ctx.restore();
    },
  };

  data.charges.forEach((c, i) => {
    const canvas = document.querySelector(`[data-histogram="${i}"]`);
    const bins = c.histogram;
    const width = bins.length ? Number(bins[0].to) - Number(bins[0].from) : 1;  // drawing only
    new Chart(canvas, {
      type: "bar",
      data: {datasets: [{label: "customers", backgroundColor: "#3b82f6", barPercentage: 1, categoryPercentage: 1,
        data: bins.map((b) => ({x: Number(b.from) + width / 2, y: b.customers}))}]},
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: {legend: {display: false}, thresholds: {values: c.thresholds.map(Number)},
          tooltip: {callbacks: {title: (items) => {
            const b = bins[items[0].dataIndex];
            return `${c.metric} ${b.from}–${b.to}`;
          }}}},
        scales: {
          x: {type: "linear", min: 0, max: bins.length ? Number(bins[bins.length - 1].to) : 1,
              title: {display: true, text: `${c.metric} per customer in ${data.period}`}},
          y: {beginAtZero: true, ticks: {precision: 0}, title: {display: true, text: "customers"}},
        },
      },
      plugins: [thresholds],
    });
  });
})();
