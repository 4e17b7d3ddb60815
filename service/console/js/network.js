// A variant's block mask drawn as its network: the stem, each stage's residual blocks left to right, the head.
// Executed blocks are filled; skipped ones are hollow, with the shortcut path running through them. Where the
// variant has a policy, a bar beneath each block shows its keep-probability, and the dashed line the threshold
// the mask was drawn at (a block runs when its bar reaches the line).

import { s } from "./dom.js";

const BLOCK_W = 16;
const BLOCK_H = 28;
const GAP = 5;
const STAGE_GAP = 16;
const BOX_W = 30;
const PAD = 4;
const LABEL_H = 13;
const PROB_H = 24;

function layout(stages) {
  const blocks = [];
  const spans = [];
  let x = PAD + BOX_W + STAGE_GAP;
  stages.forEach((count, stage) => {
    const start = x;
    for (let index = 0; index < count; index += 1) {
      blocks.push({ x, stage, index });
      x += BLOCK_W + GAP;
    }
    spans.push({ start, stage });
    x += STAGE_GAP - GAP;
  });
  return { blocks, spans, headX: x };
}

function box(x, y, label) {
  return s(
    "g",
    { class: "box" },
    s("rect", { x, y, width: BOX_W, height: BLOCK_H, rx: 3 }),
    s("text", { x: x + BOX_W / 2, y: y + BLOCK_H / 2, text: label }),
  );
}

function describe(block, place, executed, probability) {
  const state = executed ? "executed" : "skipped";
  const keep = probability === null ? "" : `, keep-probability ${probability.toFixed(3)}`;
  return `block ${block} (stage ${place.stage + 1}, block ${place.index + 1}): ${state}${keep}`;
}

export function drawNetwork({ stages, mask, probabilities = null, threshold = null }) {
  const { blocks, spans, headX } = layout(stages);
  const top = LABEL_H + 2;
  const probTop = top + BLOCK_H + 6;
  const width = headX + BOX_W + PAD + (probabilities ? 14 : 0); // room for the threshold's label
  const height = probabilities ? probTop + PROB_H + 2 : top + BLOCK_H + 2;
  const used = mask.filter(Boolean).length;
  const skipped = mask.flatMap((kept, block) => (kept ? [] : [block]));
  const label = `${used} of ${mask.length} residual blocks executed` + (skipped.length ? `; skipped: ${skipped.join(", ")}` : "");
  const svg = s("svg", { class: "network", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  const middle = top + BLOCK_H / 2;
  svg.append(s("line", { class: "path", x1: PAD + BOX_W, y1: middle, x2: headX, y2: middle }));
  svg.append(box(PAD, top, "stem"), box(headX, top, "head"));
  for (const span of spans) svg.append(s("text", { x: span.start, y: LABEL_H - 3, text: `stage ${span.stage + 1}` }));
  blocks.forEach((place, block) => {
    const executed = Boolean(mask[block]);
    const probability = probabilities ? probabilities[block] : null;
    const group = s(
      "g",
      { class: `block ${executed ? "executed" : "skipped"}`, "data-block": block, "data-executed": executed ? 1 : 0 },
      s("title", { text: describe(block, place, executed, probability) }),
      s("rect", { x: place.x, y: top, width: BLOCK_W, height: BLOCK_H, rx: 3 }),
    );
    if (probability !== null) {
      const bar = probability * PROB_H;
      const kept = threshold === null || probability >= threshold;
      group.append(
        s("rect", { class: "prob-bg", x: place.x, y: probTop, width: BLOCK_W, height: PROB_H }),
        s("rect", {
          class: `prob ${kept ? "kept" : "dropped"}`,
          x: place.x,
          y: probTop + PROB_H - bar,
          width: BLOCK_W,
          height: bar,
          "data-probability": probability,
        }),
      );
    }
    svg.append(group);
  });
  if (probabilities && threshold !== null) {
    const y = probTop + PROB_H - threshold * PROB_H;
    svg.append(
      s(
        "line",
        { class: "threshold", x1: blocks[0].x - 3, x2: headX - STAGE_GAP + GAP + 3, y1: y, y2: y },
        s("title", { text: `threshold ${threshold}` }),
      ),
      s("text", { x: headX, y: y + 3, text: `t = ${threshold}` }),
    );
  }
  return svg;
}
