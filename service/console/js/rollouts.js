// The rollouts panel of the experiment page: each rollout from GET /v1/rollouts, its steps (the current one marked),
// its guardrails at the controller's last look, and its history of decisions. Read-only: changes need the admin
// token (PUT /v1/rollouts/{variant}, POST .../pause|resume|abort; see docs/experiments.md).

import { h } from "./dom.js";
import * as format from "./format.js";

const STATE_TEXT = { holds: "holds", violated: "violated", unknown: "not yet shown" };

function bound(x, check) {
  if (x === null) return "∞";
  return check.name === "latency" ? format.decimal(x, 2) : check.name === "accuracy" ? format.points(x) : format.percent(x);
}

function checkRow(check) {
  const estimate = check.estimate === null ? format.DASH : bound(check.estimate, check);
  const low = check.low === null ? (check.name === "accuracy" ? "−∞" : format.DASH) : bound(check.low, check);
  const interval = check.low === null && check.high === null ? format.DASH : `${low} to ${bound(check.high, check)}`;
  return h("tr", { "data-check": check.name, "data-state": check.state },
    h("th", { scope: "row", text: check.name }),
    h("td", { class: `check check-${check.state}`, text: STATE_TEXT[check.state] }),
    h("td", { text: estimate }),
    h("td", { text: interval }),
    h("td", { text: bound(check.limit, check) }),
    h("td", { text: check.note ?? "" }));
}

function steps(rollout) {
  return h("ol", { class: "steps", "aria-label": "steps" }, rollout.plan.steps.map((share, i) => {
    const reached = rollout.status !== "rolled_back" && rollout.status !== "aborted" && i <= rollout.step;
    const current = i === rollout.step && (rollout.status === "running" || rollout.status === "paused");
    return h("li", { class: [reached ? "reached" : null, current ? "current" : null].filter(Boolean).join(" ") || null,
      "aria-current": current ? "step" : null, text: `${share} %` });
  }));
}

function history(rollout) {
  return h("ul", { class: "history" }, [...rollout.history].reverse().map((entry) =>
    h("li", { "data-action": entry.action },
      h("time", { datetime: new Date(entry.at * 1000).toISOString(), text: new Date(entry.at * 1000).toLocaleTimeString("en-GB") }),
      ` ${entry.action} → ${entry.share} % (${entry.status}): ${entry.reasons.join("; ")}`)));
}

function card(rollout) {
  const v = rollout.evidence.variant;
  const b = rollout.evidence.baseline;
  return h("article", { class: `rollout rollout-${rollout.status}`, "data-variant": rollout.variant, "data-status": rollout.status },
    h("h4", {}, `${rollout.variant} against ${rollout.baseline}: `, h("span", { class: "status", text: rollout.status.replace("_", " ") }),
      ` at ${rollout.share} %`),
    steps(rollout),
    h("p", { class: "hint", text: `Feedback in this step ${format.count(rollout.feedback_in_step)} of ${rollout.plan.min_feedback}; ` +
      `since the start ${format.count(v.right)} / ${format.count(v.feedback)} right on ${rollout.variant}, ` +
      `${format.count(b.right)} / ${format.count(b.feedback)} on ${rollout.baseline}.` +
      (rollout.reasons.length ? ` Last look: ${rollout.reasons.join("; ")}.` : "") }),
    h("table", { class: "checks" },
      h("caption", { text: `Guardrails: always-valid bounds, each end one-sided at ${(rollout.plan.confidence * 100).toFixed(0)} % confidence` }),
      h("thead", {}, h("tr", {}, ["Guardrail", "State", "Estimate", "Interval", "Limit", ""].map((text) => h("th", { scope: "col", text })))),
      h("tbody", {}, rollout.checks.map(checkRow))),
    h("details", { open: true }, h("summary", { text: `History (${rollout.history.length})` }), history(rollout)));
}

export function renderRollouts(container, rollouts) {
  if (rollouts.length === 0) {
    container.replaceChildren(h("p", { class: "hint", text: "No rollouts. Start one with PUT /v1/rollouts/{variant} (admin token)." }));
    return;
  }
  container.replaceChildren(...rollouts.map(card));
}
