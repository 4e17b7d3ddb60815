// How numbers read on the page; a missing value (null) is a dash everywhere.

export const DASH = "—";

const missing = (x) => x === null || x === undefined || Number.isNaN(x);

export const percent = (x, digits = 1) => (missing(x) ? DASH : `${(x * 100).toFixed(digits)} %`);
export const points = (x) => (missing(x) ? DASH : `${x < 0 ? "−" : "+"}${Math.abs(x * 100).toFixed(1)} pt`);
export const millis = (seconds, digits = 2) => (missing(seconds) ? DASH : `${(seconds * 1000).toFixed(digits)} ms`);
export const mflops = (x) => (missing(x) ? DASH : `${(x / 1e6).toFixed(1)} M`);
export const count = (x) => (missing(x) ? DASH : Math.round(x).toLocaleString("en-US"));
export const perSecond = (x) => (missing(x) ? DASH : `${x.toFixed(2)}/s`);
export const decimal = (x, digits = 2) => (missing(x) ? DASH : x.toFixed(digits));
export const pValue = (p) => (missing(p) ? DASH : p < 0.001 ? "< 0.001" : p.toFixed(3));
export const interval = (i) => (missing(i) ? DASH : `${percent(i.low)} – ${percent(i.high)}`);
