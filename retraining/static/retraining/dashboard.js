"use strict";
// Draws each chart of the admin dashboard from its Chart.js configuration, embedded by the page with json_script
// (retraining/dashboard.py builds them). Only presentation is decided here.
(function () {
  const defaults = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: {mode: "index", intersect: false},
    plugins: {
      legend: {labels: {boxWidth: 12, font: {size: 11}}},
      tooltip: {callbacks: {afterLabel: statusOf}},
    },
  };

  function statusOf(item) {
    const status = item.dataset.status;
    return status ? "status: " + status[item.dataIndex] : "";
  }

  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    const config = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
    const options = Object.assign({}, defaults, config.options || {});
    options.plugins = Object.assign({}, defaults.plugins, (config.options || {}).plugins || {});
    new Chart(canvas, {type: config.type, data: config.data, options: options});
  });
})();
