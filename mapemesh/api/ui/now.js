// The Now view: functions with their scale and cold starts, Triggers with events/s and failures, the broker's
// backlog (`GET /dashboard/now`, what `mapemesh status` shows).
import {get} from "./api.js";
import {MAX_RATE_POINTS} from "./caps.js";
import {sparkline} from "./charts.js";
import {el, number, replace, table} from "./dom.js";

export class NowView {
  constructor(root) {
    this.root = root;
    this.previous = null;  // {at, accepted: {trigger: count}}
    this.rates = new Map();  // trigger -> [[time, events/s], ...] (MAX_RATE_POINTS at most)
  }

  sizes() {
    return {rate_series: this.rates.size, rate_points: Math.max(0, ...[...this.rates.values()].map((s) => s.length))};
  }

  async refresh() {
    this.render(await get("dashboard/now"));
  }

  rate(key, accepted, at) {
    const before = this.previous ? this.previous.accepted[key] : undefined;
    if (before === undefined || at <= this.previous.at) return null;
    const value = Math.max(0, accepted - before) / (at - this.previous.at);
    const series = this.rates.get(key) || [];
    series.push([at, value]);
    if (series.length > MAX_RATE_POINTS) series.splice(0, series.length - MAX_RATE_POINTS);
    this.rates.set(key, series);
    return value;
  }

  render(doc) {
    const errors = Object.entries(doc.errors || {}).map(([k, v]) => el("p", {class: "error", text: `${k}: ${v}`}));
    const functions = Object.entries(doc.functions || {}).map(([key, f]) => {
      const scale = f.scaled_to_zero ? "0 (scaled to zero)" : String(f.processes);
      const bounds = `${f.min_scale ?? 0}..${f.max_scale || "∞"}`;
      return el("tr", {dataFunction: key, class: f.ready ? "" : "not-ready"},
        el("td", {text: key}), el("td", {class: "num", text: scale}), el("td", {class: "num", text: bounds}),
        el("td", {class: "num", text: f.in_flight}), el("td", {class: "num", text: f.queued}),
        el("td", {class: "num", text: f.cold_starts}),
        el("td", {class: "small", text: f.ready ? f.runtime_class : `not ready: ${f.reason}`}));
    });
    const backlog = doc.backlog || {by_trigger: {}};
    const accepted = {};
    const triggers = Object.entries(doc.triggers || {}).map(([key, t]) => {
      accepted[key] = t.accepted || 0;
      const rate = this.rate(key, accepted[key], doc.at);
      const failures = (t.dead_lettered || 0) + (t.dropped || 0);
      const pending = (backlog.by_trigger[key] || {}).pending || 0;
      return el("tr", {dataTrigger: key, class: failures ? "failing" : ""},
        el("td", {text: key}), el("td", {class: "small", text: t.subscriber || ""}),
        el("td", {class: "num", text: rate === null ? "–" : number(rate)}),
        el("td", {}, sparkline(this.rates.get(key) || [], {width: 90, height: 18, label: `${key} events/s`})),
        el("td", {class: "num", text: t.delivered || 0}), el("td", {class: "num", text: t.retried || 0}),
        el("td", {class: "num", text: failures}), el("td", {class: "num", text: pending}),
        el("td", {class: "small", text: t.ready ? "ready" : `not ready: ${t.reason}`}));
    });
    for (const key of [...this.rates.keys()]) if (!(key in accepted)) this.rates.delete(key);  // Triggers gone
    this.previous = {at: doc.at, accepted};
    const log = doc.log || {};
    replace(this.root,
      errors,
      el("div", {class: "cards"},
        el("div", {class: "card", id: "backlog"}, el("h3", {text: "Broker backlog"}),
           el("p", {class: "big", text: doc.backlog ? String(backlog.pending) : "–"}),
           el("p", {class: "small", text: doc.backlog ? `deliveries not made yet; oldest ${number(backlog.oldest_age_s ?? 0)} s`
             : "no broker log beside this API"}),
           el("p", {class: "small", text: `${log.appended ?? "–"} events appended since the broker started`})),
        el("div", {class: "card"}, el("h3", {text: "Functions"}),
           el("p", {class: "big", text: String(functions.length)}),
           el("p", {class: "small", text: `${Object.values(doc.functions || {}).filter((f) => f.processes > 0).length} running, ` +
             `${Object.values(doc.functions || {}).reduce((n, f) => n + (f.cold_starts || 0), 0)} cold starts`}))),
      el("h2", {text: "Functions"}),
      table(["function", "scale", "min..max", "in flight", "queued", "cold starts", "runtime"], functions, {id: "functions"}),
      el("h2", {text: "Triggers"}),
      table(["trigger", "subscriber", "events/s", "", "delivered", "retried", "failed", "backlog", "state"], triggers,
            {id: "triggers"}));
    this.root.dataset.loaded = "true";
  }
}
