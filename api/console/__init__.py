"""The web console and the customer portal: server-rendered pages (Jinja2) over the read API,
with small vanilla scripts and a vendored Chart.js (static/vendor, pinned, with its licence), so
they work offline."""
