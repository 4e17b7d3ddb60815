// The experiment page: the /v1/experiment report as a table and charts, fetched again every few seconds while the
// page is shown. The page computes nothing itself: every figure is the report's (see docs/console.md).

import { getJSON, query } from "./api.js";
import * as charts from "./charts.js";
import { h } from "./dom.js";
import * as format from "./format.js";
import { renderRollouts } from "./rollouts.js";

export const REFRESH_MS = 3000;

const byId = (id) => document.getElementById(id);

// one column per figure: where it is in a variant's report, and how it reads (some read a second figure too)
const COLUMNS = [
  { field: "traffic.configured", header: "Share (weights)", text: (x) => format.percent(x) },
  { field: "traffic.observed", header: "Share (observed)", text: (x) => format.percent(x) },
  { field: "requests.total", header: "Requests", text: format.count },
  { field: "requests.errors", header: "Errors", text: format.count },
  { field: "requests.per_second", header: "Req/s", text: format.perSecond },
  { field: "latency_s.p50", header: "p50", text: (x) => format.millis(x, 1) },
  { field: "latency_s.p95", header: "p95", text: (x) => format.millis(x, 1) },
  { field: "flops.mean", header: "Mean FLOPs", text: format.mflops },
  { field: "flops.saved", header: "Saved (own net)", text: (x) => format.percent(x) },
  { field: "flops.saved_vs_baseline", header: "Saved vs baseline", text: (x) => format.percent(x) },
  { field: "feedback.right", header: "Right / feedback", text: (x, v) => `${format.count(x)} / ${format.count(v.feedback.n)}` },
  { field: "feedback.accuracy", header: "Accuracy (95 % CI)", text: (x, v) => accuracyText(x, v.feedback.interval) },
  { field: "always_valid.accuracy.decision", header: "Decision", text: (x) => x ?? format.DASH },
  { field: "always_valid.accuracy.estimate", header: "Δ accuracy, always-valid", text: (x, v) => boundsText(x, v.always_valid?.accuracy, format.points) },
  { field: "always_valid.latency_p99_ratio.estimate", header: "p99 ratio, always-valid", text: (x, v) => boundsText(x, v.always_valid?.latency_p99_ratio, ratio) },
  { field: "always_valid.flops_fraction_of_baseline.estimate", header: "FLOPs / baseline, always-valid", text: (x, v) => boundsText(x, v.always_valid?.flops_fraction_of_baseline, (y) => format.percent(y)) },
  { field: "feedback.fixed_horizon.difference", header: "Δ (fixed-horizon)", text: format.points },
  { field: "feedback.fixed_horizon.p_value", header: "p (fixed-horizon, one look)", text: format.pValue },
];

const ratio = (x) => format.decimal(x, 2);

// "estimate [low, high]", an end that is not bounded yet shown as ∞ (or −∞)
function boundsText(estimate, bounds, text) {
  if (bounds === null || bounds === undefined || estimate === null) return format.DASH;
  const low = bounds.low === null ? "−∞" : text(bounds.low);
  const high = bounds.high === null ? "∞" : text(bounds.high);
  return `${text(estimate)} [${low}, ${high}]`;
}

function accuracyText(accuracy, interval) {
  if (interval === null) return format.percent(accuracy);
  return `${format.percent(accuracy)} (${(interval.low * 100).toFixed(1)}–${(interval.high * 100).toFixed(1)})`;
}

const at = (report, path) => path.split(".").reduce((value, key) => (value === null || value === undefined ? null : value[key]), report);

function shadowCell(shadows) {
  const text = shadows.map((x) => `${format.percent(x.agreement)} (${format.count(x.agree + x.disagree)})`).join("; ");
  const title = shadows.map((x) => `agrees with ${x.shadow} on ${format.count(x.agree)} of ${format.count(x.agree + x.disagree)}` +
    ` (95 % CI ${format.interval(x.interval)}; ${format.count(x.skipped)} skipped)`).join("; ");
  return h("td", { "data-field": "shadow", "data-value": JSON.stringify(shadows), title: title || null, text: text || format.DASH });
}

function renderTable(report) {
  const table = byId("experiment-table");
  const headers = ["Variant", ...COLUMNS.map((column) => column.header), "Shadow agrees"];
  table.tHead.replaceChildren(h("tr", {}, headers.map((text) => h("th", { scope: "col", text }))));
  const rows = report.variants.map((variant) => {
    const cells = COLUMNS.map((column) => {
      const value = at(variant, column.field);
      const significant = column.field.endsWith("p_value") && at(variant, "feedback.fixed_horizon.significant");
      const decision = column.field.endsWith("decision") && value ? `decision decision-${value}` : null;
      return h("td", {
        "data-field": column.field,
        "data-value": JSON.stringify(value),
        class: significant ? "significant" : decision,
        text: column.text(value, variant) + (significant ? " *" : ""),
      });
    });
    const shadow = shadowCell(variant.shadow);
    const name = h("th", { scope: "row" }, variant.name, variant.name === report.baseline ? " (baseline)" : "");
    return h("tr", { "data-variant": variant.name }, name, ...cells, shadow);
  });
  table.tBodies[0].replaceChildren(...rows);
}

function render(report) {
  const note = byId("experiment-note");
  note.hidden = !report.note;
  note.textContent = report.note ?? "";
  byId("experiment-error").hidden = true;
  renderTable(report);
  const { variants } = report;
  byId("chart-traffic").replaceChildren(charts.trafficChart(variants));
  byId("chart-accuracy").replaceChildren(charts.accuracyChart(variants, report.baseline));
  byId("chart-latency").replaceChildren(charts.latencyChart(variants));
  byId("chart-skipped").replaceChildren(charts.skippedChart(variants));
  byId("chart-heatmap").replaceChildren(charts.heatmap(variants));
  const span = report.rate_span_s === null ? "requests/s from the next refresh on" : `requests/s over the last ${report.rate_span_s.toFixed(1)} s`;
  byId("updated").textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}; ${span}.`;
  const section = byId("experiment");
  section.dataset.renders = String(Number(section.dataset.renders ?? 0) + 1);
}

export function initExperiment(models) {
  const baseline = byId("baseline");
  const toggle = byId("refresh-toggle");
  // null until the user picks one (or the URL names one): the server chooses the default and says which
  let chosen = new URLSearchParams(location.search).get("baseline");
  for (const model of models) baseline.append(h("option", { value: model.name, text: model.name, selected: model.name === chosen }));
  if (chosen !== null && !models.some((model) => model.name === chosen)) {
    baseline.append(h("option", { value: chosen, text: `${chosen} (not served)`, selected: true }));
  }
  let active = false;
  let paused = false;
  let timer = null;
  let generation = 0;

  async function refresh() {
    clearTimeout(timer);
    const mine = (generation += 1);
    const [answer, rollouts] = await Promise.all([getJSON(query("/v1/experiment", { baseline: chosen })), getJSON("/v1/rollouts")]);
    if (mine !== generation) return; // a newer refresh started meanwhile
    if (rollouts.ok) renderRollouts(byId("rollouts"), rollouts.body);
    if (answer.ok) {
      if (chosen === null) baseline.value = answer.body.baseline;
      render(answer.body);
    } else Object.assign(byId("experiment-error"), { hidden: false, textContent: `${answer.status}: ${answer.body.error}` });
    if (active && !paused) timer = setTimeout(refresh, REFRESH_MS);
  }

  baseline.addEventListener("change", () => {
    chosen = baseline.value;
    refresh();
  });
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    toggle.textContent = paused ? "Resume auto-refresh" : "Pause auto-refresh";
    if (!paused && active) refresh();
    else clearTimeout(timer);
  });
  return {
    setActive(on) {
      active = on;
      if (on) refresh();
      else clearTimeout(timer);
    },
  };
}
