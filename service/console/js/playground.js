// The playground: choose an image (a sample, a file, or a drop), run it on each chosen variant at the chosen
// compute budget, and show per variant the prediction, top-k, FLOPs, latency and the network it ran.

import { getJSON, postImage, query } from "./api.js";
import { h } from "./dom.js";
import * as format from "./format.js";
import { drawNetwork } from "./network.js";

const TOP_K = 3;

const byId = (id) => document.getElementById(id);

function meter(fraction) {
  return h("span", { class: "meter", "aria-hidden": "true" }, h("span", { style: `width: ${Math.min(1, fraction) * 100}%` }));
}

function budgetValue() {
  const level = byId("budget").value;
  return level === "custom" ? byId("budget-fraction").value : level;
}

function renderSamples(samples, choose) {
  const list = byId("sample-list");
  for (const sample of samples) {
    const button = h(
      "button",
      { type: "button", class: "sample", "data-sample": sample.name, "aria-pressed": "false" },
      h("img", { src: sample.url, alt: "", width: 48, height: 48 }),
      sample.label,
    );
    button.addEventListener("click", async () => {
      for (const other of list.querySelectorAll(".sample")) other.setAttribute("aria-pressed", String(other === button));
      const response = await fetch(sample.url);
      choose(await response.blob(), `sample ${sample.label}`);
    });
    list.append(button);
  }
}

function renderVariantChoice(models) {
  const box = byId("variant-choice");
  for (const model of models) {
    const id = `variant-${model.name}`;
    box.append(
      h(
        "div",
        {},
        h("input", { type: "checkbox", id, value: model.name, checked: true }),
        h("label", { for: id, text: ` ${model.name}` }),
      ),
    );
  }
}

function facts(rows) {
  return h("dl", { class: "facts" }, rows.flatMap(([term, value, field]) => [h("dt", { text: term }), h("dd", { "data-field": field }, value)]));
}

function computeText(compute) {
  const parts = [compute.threshold === null ? "runs every block" : `threshold ${compute.threshold}`];
  if (compute.budget !== null && compute.budget !== undefined) parts.push(`budget ${compute.budget}`);
  if (compute.note) parts.push(compute.note);
  return parts.join(" · ");
}

function resultCard(model, result, explanation) {
  const { flops, blocks, latency_ms: latency } = result;
  const probabilities = explanation?.keep_probabilities ?? null;
  return [
    h(
      "p",
      { class: "prediction" },
      h("strong", { "data-field": "label", text: result.prediction.label }),
      h("span", { class: "confidence", "data-field": "confidence", text: format.percent(result.prediction.confidence) }),
    ),
    h(
      "ol",
      { class: "topk", "aria-label": `top ${result.top_k.length} classes` },
      result.top_k.map((row) =>
        h("li", {}, h("span", { text: row.label }), meter(row.confidence), h("span", { text: format.percent(row.confidence) })),
      ),
    ),
    facts([
      ["FLOPs", [`${format.mflops(flops.executed)} of ${format.mflops(flops.full)} (${format.percent(flops.ratio)})`, meter(flops.ratio)], "flops"],
      ["Blocks", `${blocks.used} of ${blocks.total} executed, ${blocks.skipped} skipped`, "blocks"],
      ["Latency", `${latency.total.toFixed(2)} ms (queue ${latency.queue.toFixed(2)}, model ${latency.inference.toFixed(2)})`, "latency"],
      ["Compute", computeText(result.compute), "compute"],
    ]),
    h(
      "figure",
      { class: "network-figure" },
      drawNetwork({
        stages: model.stages ?? [blocks.total],
        mask: [...blocks.mask].map((c) => c === "1"),
        probabilities,
        threshold: probabilities ? explanation.compute.threshold : null,
      }),
      h("figcaption", {
        class: "hint",
        text: probabilities
          ? "Filled: executed; hollow: skipped. Bars: the policy's keep-probability; dashed: the threshold."
          : "Filled: executed; hollow: skipped. No policy: every block runs.",
      }),
    ),
  ];
}

async function runVariant(model, image, budget, card) {
  const params = { variant: model.name, budget };
  const classify = postImage(query("/v1/classify", { ...params, top_k: TOP_K }), image);
  const explain = model.mode === "blockdrop" ? postImage(query("/v1/explain", params), image) : null;
  const [result, explanation] = await Promise.all([classify, explain]);
  const body = card.querySelector(".body");
  if (!result.ok) {
    body.replaceChildren(h("p", { class: "error", role: "alert", text: `${result.status}: ${result.body.error}` }));
    return;
  }
  card.dataset.requestId = result.body.request_id;
  card.dataset.mask = result.body.blocks.mask;
  const explained = explanation && explanation.ok ? explanation.body : null;
  body.replaceChildren(...resultCard(model, result.body, explained));
  if (explanation && !explanation.ok) body.append(h("p", { class: "error", text: `explain: ${explanation.body.error}` }));
}

export async function initPlayground(models) {
  const state = { image: null, name: null };
  const results = byId("results");
  const runButton = byId("run");

  let latest = 0;

  async function run() {
    if (!state.image) return;
    const chosen = models.filter((model) => byId(`variant-${model.name}`).checked);
    if (!chosen.length) {
      results.replaceChildren(h("p", { class: "error", role: "alert", text: "Tick at least one variant." }));
      return;
    }
    const budget = budgetValue();
    const mine = (latest += 1);
    results.setAttribute("aria-busy", "true");
    const cards = chosen.map((model) =>
      h(
        "article",
        { class: "result", "data-variant": model.name },
        h("header", {}, h("h3", { text: model.name }), h("span", { class: "model", text: model.model })),
        h("div", { class: "body" }, h("p", { class: "hint", text: "running…" })),
      ),
    );
    results.replaceChildren(...cards);
    await Promise.all(chosen.map((model, i) => runVariant(model, state.image, budget, cards[i])));
    if (mine !== latest) return; // a newer run replaced these cards
    results.setAttribute("aria-busy", "false");
    results.dataset.runs = String(mine);
  }

  function choose(image, name) {
    state.image = image;
    state.name = name;
    byId("chosen").textContent = `Chosen: ${name}.`;
    runButton.disabled = false;
    return run();
  }

  const samples = await getJSON("/v1/samples");
  renderSamples(samples.ok ? samples.body.samples : [], choose);
  renderVariantChoice(models);

  byId("playground-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  byId("upload").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) choose(file, `file ${file.name}`);
  });
  const budget = byId("budget");
  const fraction = byId("budget-fraction");
  budget.addEventListener("change", () => {
    fraction.disabled = budget.value !== "custom";
  });
  fraction.addEventListener("input", () => {
    byId("budget-fraction-value").textContent = fraction.value;
  });
  // the whole playground takes a dropped file (the file input above does the same from the keyboard)
  const area = byId("playground");
  const zone = byId("drop-zone");
  area.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  area.addEventListener("dragleave", () => zone.classList.remove("over"));
  area.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) choose(file, `file ${file.name}`);
  });
}
