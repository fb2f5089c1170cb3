// Small DOM and formatting helpers shared by the views (text is always set as text, never as HTML).
import {MAX_KNOB_FIELDS} from "./caps.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value);  // through the CSSOM: the page's CSP has no inline styles
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data")) node.dataset[key.slice(4, 5).toLowerCase() + key.slice(5)] = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replace(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export function table(headers, rows, attrs = {}) {
  return el("table", attrs, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {text: h})))),
            el("tbody", {}, rows));
}

export function clock(epochSeconds) {
  if (!epochSeconds) return "";
  return new Date(epochSeconds * 1000).toLocaleTimeString([], {hour12: false});
}

export function short(value, width = 90) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) return "";
  return text.length <= width ? text : text.slice(0, width - 1) + "…";
}

export function number(value, digits = 2) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function shown(key, value) {
  if (typeof value === "number" && key.endsWith("_hz")) return `${(value / 1e9).toFixed(2)} GHz`;
  return short(value, 24);
}

function flatten(doc, prefix = "", out = {}) {
  if (doc && typeof doc === "object" && Object.keys(doc).length) {
    for (const [key, value] of Object.entries(doc)) flatten(value, prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out[prefix] = doc;
  }
  return out;
}

const pattern = (key) => key.split(".").map((part) => (/^\d+$/.test(part) ? "*" : part)).join(".");

// Values that are the same for every CPU (or other numbered item) are one `cpus.*.x` entry.
function grouped(flat) {
  const groups = new Map();
  for (const [key, value] of Object.entries(flat)) {
    const p = pattern(key);
    if (!groups.has(p)) groups.set(p, new Map());
    groups.get(p).set(key, value);
  }
  const out = [];
  for (const [p, members] of groups) {
    const distinct = new Set([...members.values()].map((v) => JSON.stringify(v)));
    if (distinct.size === 1) out.push([p, [...members.values()][0]]);
    else out.push(...members);
  }
  return out;
}

// A knob's state in a few `path value` entries: what an operator looks at.
export function knobSummary(state, limit = MAX_KNOB_FIELDS) {
  const entries = grouped(flatten(state)).map(([k, v]) => `${k} ${shown(k, v)}`);
  return entries.length <= limit ? entries : [...entries.slice(0, limit), `+${entries.length - limit} more`];
}

// What differs between a knob's values before and after: `path old -> new`, the first few.
export function changes(before, after, limit = 3) {
  const old = flatten(before);
  const now = flatten(after);
  const keys = [...new Set([...Object.keys(old), ...Object.keys(now)])].sort();
  const differing = {};
  for (const key of keys) {
    if (JSON.stringify(old[key]) !== JSON.stringify(now[key])) differing[key] = [old[key], now[key]];
  }
  const parts = grouped(differing).map(([k, [a, b]]) => `${k} ${shown(k, a)} -> ${shown(k, b)}`);
  if (!parts.length) return "no change";
  return parts.slice(0, limit).join(", ") + (parts.length > limit ? ` (+${parts.length - limit} more)` : "");
}
