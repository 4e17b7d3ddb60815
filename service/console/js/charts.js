// The experiment's charts, drawn as SVG from the /v1/experiment report (one function per chart, each returning an
// <svg>). Rows are variants, in the report's order; every mark carries a <title> with its exact figures.

import { s, svgRoot } from "./dom.js";
import * as format from "./format.js";

const WIDTH = 460;
const ROW = 22;
const LEFT = 100;
const RIGHT = 96;
const TOP = 6;

const plotWidth = WIDTH - LEFT - RIGHT;
const rowLabel = (y, name) => s("text", { class: "label", x: LEFT - 6, y: y + 4, "text-anchor": "end", text: name });

function axis(height, ticks, scale, label) {
  return [
    s("line", { class: "axis", x1: LEFT, x2: LEFT, y1: TOP - 2, y2: height - 14 }),
    ...ticks.map((tick) => s("text", { x: scale(tick), y: height - 3, "text-anchor": "middle", text: label(tick) })),
  ];
}

const shareTick = (share) => format.percent(share, 0);

export function trafficChart(variants) {
  const height = TOP + variants.length * ROW + 18;
  const x = (share) => LEFT + share * plotWidth;
  const marks = variants.flatMap((v, i) => {
    const y = TOP + i * ROW;
    const { configured, observed } = v.traffic;
    return [
      rowLabel(y + 6, v.name),
      s("rect", { class: "configured", x: LEFT, y: y + 1, width: (configured ?? 0) * plotWidth, height: 13 },
        s("title", { text: `${v.name}: configured ${format.percent(configured)}` })),
      s("rect", { class: "observed", x: LEFT, y: y + 4, width: (observed ?? 0) * plotWidth, height: 7 },
        s("title", { text: `${v.name}: observed ${format.percent(observed)} of ${format.count(v.traffic.requests)} requests` })),
      s("text", { x: x(Math.max(configured ?? 0, observed ?? 0)) + 4, y: y + 11, text: format.percent(observed) }),
    ];
  });
  return svgRoot(WIDTH, height, "traffic share per variant", ...axis(height, [0, 0.25, 0.5, 0.75, 1], x, shareTick), ...marks);
}

export function accuracyChart(variants, baseline) {
  const height = TOP + variants.length * ROW + 18;
  const lows = variants.map((v) => v.feedback.interval?.low).filter((low) => low !== undefined);
  const from = lows.length ? Math.max(0, Math.floor(Math.min(...lows) * 10) / 10) : 0;
  const x = (accuracy) => LEFT + ((accuracy - from) / (1 - from)) * plotWidth;
  const reference = variants.find((v) => v.name === baseline)?.feedback.accuracy ?? null;
  const marks = variants.flatMap((v, i) => {
    const y = TOP + i * ROW + 8;
    const { accuracy, interval, n, fixed_horizon: test } = v.feedback;
    const row = [rowLabel(y - 2, v.name)];
    if (accuracy === null) return [...row, s("text", { x: LEFT + 4, y: y + 2, text: "no feedback yet" })];
    const tip = `${v.name}: ${format.percent(accuracy)} of ${format.count(n)}, 95 % CI ${format.interval(interval)}` +
      (test ? `; vs ${test.baseline} ${format.points(test.difference)}, fixed-horizon p = ${format.pValue(test.p_value)}` : "");
    // the always-valid decision, which holds however often the board is watched (the fixed-horizon p does not)
    const note = v.always_valid ? v.always_valid.accuracy.decision : "";
    return [
      ...row,
      s("line", { class: "interval", x1: x(interval.low), x2: x(interval.high), y1: y, y2: y }, s("title", { text: tip })),
      s("circle", { class: "point", cx: x(accuracy), cy: y, r: 3.5 }, s("title", { text: tip })),
      s("text", { x: LEFT + plotWidth + 6, y: y + 3, text: note }),
    ];
  });
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1].filter((t) => t >= from);
  const lines = reference === null ? [] : [s("line", { class: "reference", x1: x(reference), x2: x(reference), y1: TOP, y2: height - 14 })];
  return svgRoot(WIDTH, height, "feedback accuracy per variant", ...axis(height, ticks, x, shareTick), ...lines, ...marks);
}

const decimalMs = (seconds) => (seconds === null ? format.DASH : (seconds * 1000).toFixed(1));

export function latencyChart(variants) {
  const height = TOP + variants.length * ROW + 18;
  const top = Math.max(0.001, ...variants.map((v) => v.latency_s.p95 ?? 0));
  const x = (seconds) => LEFT + (seconds / top) * plotWidth;
  const marks = variants.flatMap((v, i) => {
    const y = TOP + i * ROW;
    const { p50, p95 } = v.latency_s;
    const tip = `${v.name}: p50 ${format.millis(p50)}, p95 ${format.millis(p95)}`;
    return [
      rowLabel(y + 6, v.name),
      s("rect", { class: "p95", x: LEFT, y: y + 1, width: x(p95 ?? 0) - LEFT, height: 13 }, s("title", { text: tip })),
      s("rect", { class: "bar", x: LEFT, y: y + 4, width: x(p50 ?? 0) - LEFT, height: 7 }, s("title", { text: tip })),
      s("text", { x: LEFT + plotWidth + 6, y: y + 11, text: `${decimalMs(p50)} / ${format.millis(p95, 1)}` }),
    ];
  });
  const ticks = [0, top / 2, top];
  const label = (seconds) => `${Number((seconds * 1000).toPrecision(2))} ms`;
  return svgRoot(WIDTH, height, "latency p50 and p95 per variant", ...axis(height, ticks, x, label), ...marks);
}

function bucketLabel(buckets, i) {
  const high = buckets[i].le;
  const low = i === 0 ? null : buckets[i - 1].le;
  if (!Number.isFinite(high)) return `>${low}`;
  return low === null || high - low === 1 ? `${high}` : `${low + 1}–${high}`;
}

export function skippedChart(variants) {
  const rowHeight = 34;
  const height = TOP + variants.length * rowHeight + 4;
  const marks = variants.flatMap((v, i) => {
    const y = TOP + i * rowHeight;
    const { buckets, count, mean } = v.skipped_blocks;
    const row = [rowLabel(y + 14, v.name)];
    if (!count) return [...row, s("text", { x: LEFT + 4, y: y + 18, text: "no images yet" })];
    const width = plotWidth / buckets.length;
    const tallest = Math.max(...buckets.map((b) => b.count));
    buckets.forEach((bucket, j) => {
      const barHeight = (bucket.count / tallest) * 22;
      const label = bucketLabel(buckets, j);
      row.push(
        s("rect", { class: "bar", x: LEFT + j * width + 1, y: y + 24 - barHeight, width: width - 2, height: barHeight },
          s("title", { text: `${v.name}: ${label} skipped in ${format.percent(bucket.count / count)} of images (${format.count(bucket.count)})` })),
      );
      // labels where images are, and at both ends: many buckets' labels would overlap
      if (bucket.count > 0 || j === 0 || j === buckets.length - 1) {
        row.push(s("text", { x: LEFT + (j + 0.5) * width, y: y + 32, "text-anchor": "middle", text: label }));
      }
    });
    row.push(s("text", { x: LEFT + plotWidth + 6, y: y + 18, text: `mean ${format.decimal(mean, 1)}` }));
    return row;
  });
  return svgRoot(WIDTH, height, "distribution of skipped blocks per variant", ...marks);
}

export function heatmap(variants) {
  const cell = 18;
  const stageGap = 8;
  const left = LEFT;
  const widest = Math.max(...variants.map((v) => v.blocks * cell + (v.stages.length - 1) * stageGap));
  const width = left + widest + 60;
  const height = TOP + variants.length * (cell + 4) + 30;
  const marks = variants.flatMap((v, i) => {
    const y = TOP + i * (cell + 4);
    const row = [rowLabel(y + cell / 2 - 2, v.name)];
    let block = 0;
    let x = left;
    v.stages.forEach((count, stage) => {
      for (let j = 0; j < count; j += 1, block += 1) {
        const rate = v.block_executions.rates[block];
        const ran = v.block_executions.counts[block];
        const tip = rate === null
          ? `${v.name}, block ${block} (stage ${stage + 1}): no images yet`
          : `${v.name}, block ${block} (stage ${stage + 1}): runs for ${format.percent(rate)} of images (${format.count(ran)} of ${format.count(v.images)})`;
        row.push(
          s("rect", {
            class: rate === null ? "empty-cell" : "cell",
            x, y, width: cell - 2, height: cell,
            fill: rate === null ? null : `hsl(222, 75%, ${96 - 58 * rate}%)`,
            "data-variant": v.name, "data-block": block, "data-rate": rate,
          }, s("title", { text: tip })),
        );
        x += cell;
      }
      x += stageGap;
    });
    return row;
  });
  const legendY = height - 18;
  const legend = [0, 0.25, 0.5, 0.75, 1].flatMap((rate, k) => [
    s("rect", { x: left + k * 40, y: legendY, width: 16, height: 10, fill: `hsl(222, 75%, ${96 - 58 * rate}%)` }),
    s("text", { x: left + k * 40 + 19, y: legendY + 9, text: format.percent(rate, 0) }),
  ]);
  return svgRoot(width, height, "how often each block runs, per variant", ...marks, ...legend);
}
