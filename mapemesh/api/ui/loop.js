// The Loop view: a live timeline of the mesh's events (telemetry, analyses, plans, knob changes, deployments),
// a table of recent plans with their status, and a plan's causal chain with each hop's latency on a click.
import {get} from "./api.js";
import {MAX_ASSETS, MAX_PLANS, MAX_TIMELINE, MAX_TRACE_EVENTS, TELEMETRY_EVERY_MS} from "./caps.js";
import {changes, clock, el, number, replace, short, table} from "./dom.js";

const P = "io.mapemesh.";
const PLUMBING = new Set([`${P}state.changed.v1`, `${P}policy.analyze.requested.v1`, `${P}policy.plan.requested.v1`]);
const SHOWN_METRICS = ["node_cpu_utilization", "node_cpu_frequency_hz", "node_memory_used_ratio", "latency_ms"];

function metric(name, value) {
  if (name.endsWith("_hz")) return `${name.slice(0, -3)} ${(value / 1e9).toFixed(2)} GHz`;
  if (name.endsWith("_utilization") || name.endsWith("_ratio")) return `${name} ${(value <= 1 ? value * 100 : value).toFixed(0)}%`;
  return `${name} ${number(value)}`;
}

function telemetry(d) {
  const latest = new Map((d.metrics || []).filter((m) => m && m.name).map((m) => [m.name, Number(m.value)]));
  const chosen = SHOWN_METRICS.filter((n) => latest.has(n));
  const names = chosen.length ? chosen : [...latest.keys()].sort().slice(0, 3);
  const more = latest.size - names.length;
  return `${d.asset}: ${names.map((n) => metric(n, latest.get(n))).join(", ")}${more > 0 ? ` (+${more} more)` : ""}`;
}

// type -> [stage, text]
const FORMATS = {
  "telemetry.reported.v1": ["telemetry", telemetry],
  "state.changed.v1": ["monitor", (d) => `${d.asset}: ${(d.changed || []).join(", ")}`],
  "policy.analyze.requested.v1": ["analyze", (d) => `ask policy ${d.policy} about ${d.asset}`],
  "policy.analyze.replied.v1": ["analyze", (d) => `policy ${d.policy} on ${d.asset}: ` +
    (d.error ? `error ${d.error}` : d.verdict ? "needs a new plan" : "nothing to do")],
  "policy.plan.requested.v1": ["plan", (d) => `ask policy ${d.policy} for a plan for ${d.asset}`],
  "policy.plan.replied.v1": ["plan", (d) => `policy ${d.policy} on ${d.asset}: ` +
    (d.error ? `error ${d.error}` : short(d.plan || {}))],
  "plan.proposed.v1": ["plan", (d) => `plan ${String(d.plan_id).slice(0, 8)} by ${d.policy} for ${d.asset}: ${short(d.mechanisms)}`],
  "plan.scheduled.v1": ["schedule", (d) => `plan ${String(d.plan_id).slice(0, 8)} (${d.policy}) scheduled in cycle ${d.cycle}`],
  "plan.discarded.v1": ["schedule", (d) => `plan ${String(d.plan_id).slice(0, 8)} (${d.policy}) discarded: ${d.reason}`],
  "knob.apply.v1": ["execute", (d) => `${d.knob} on ${d.node}: ${short(d.command)}`],
  "knob.applied.v1": ["knob", (d) => `${d.node} ${d.knob}: ` + (d.noop ? "already in effect" : changes(d.before, d.after))],
  "knob.failed.v1": ["knob", (d) => `${d.node} ${d.knob} FAILED (${d.code}): ${d.error}`],
  "deploy.requested.v1": ["deploy", (d) => `${d.app_id}: place ${short({clusters: d.placement, nodes: d.nodes})}`],
  "deploy.status.v1": ["deploy", (d) => `${d.app_id}: ${d.status} ${(d.clusters || []).join(",")} (${d.objects || 0} objects)`],
  "app.submitted.v1": ["api", (d) => `${d.kind || "application"} ${d.app_id} submitted`],
  "app.removed.v1": ["api", (d) => `${d.app_id} removed`],
  "infra.registered.v1": ["api", (d) => `${d.kind} ${d.infra_id} registered`],
  "trust.updated.v1": ["trust", (d) => `${d.asset_kind} ${d.asset}: credit ${number(d.credit, 3)}` +
    (typeof d.previous === "number" ? ` (was ${number(d.previous, 3)})` : "")],
  "auth.refused.v1": ["auth", (d) => `${d.receiver} refused ${d.command} from ${d.sender} (${d.rule}): ${d.reason}`],
  "mode.changed.v1": ["api", (d) => `mode ${d.previous} -> ${d.mode}${d.manual_override ? " (manual override)" : ""}`],
};

// What each event says about a plan's status.
const STATUS = {
  "plan.proposed.v1": (d) => ({status: "Queued", policy: d.policy, asset: d.asset, mechanisms: d.mechanisms}),
  "plan.scheduled.v1": (d) => ({status: "Scheduled", cycle: d.cycle}),
  "plan.discarded.v1": (d) => ({status: "Discarded", winner: d.winner, reason: d.reason, cycle: d.cycle}),
  "knob.applied.v1": (d) => ({status: "Success", result: d.noop ? "already in effect" : changes(d.before, d.after)}),
  "knob.failed.v1": (d) => ({status: "Failed", reason: d.error}),
  "deploy.status.v1": (d) => ({status: d.status === "Failed" ? "Failed" : "Success", result: d.status, reason: d.message}),
};

export class LoopView {
  constructor(root) {
    this.root = root;
    this.everything = false;
    this.plans = new Map();  // plan_id -> plan (insertion order: the oldest first)
    this.folded = new Map();  // asset -> when its telemetry was last shown
    this.timeline = el("ol", {id: "timeline", class: "timeline", dataCap: MAX_TIMELINE});
    this.planBody = el("tbody");
    this.trace = el("aside", {id: "trace", class: "trace", hidden: true});
    const toggle = el("input", {type: "checkbox", id: "loop-all", onchange: (e) => { this.everything = e.target.checked; }});
    replace(root,
      el("div", {class: "loop-grid"},
        el("div", {class: "panel"}, el("h2", {}, "Timeline ", el("label", {class: "small"}, toggle, " the loop's plumbing too")),
           this.timeline),
        el("div", {class: "panel"}, this.trace, el("h2", {text: "Plans (click one for its causal chain)"}),
           el("div", {class: "scroll"},
              el("table", {id: "plans", class: "plans"},
                 el("thead", {}, el("tr", {}, ["plan", "policy", "asset", "status", "why"].map((h) => el("th", {text: h})))),
                 this.planBody)))));
  }

  sizes() {
    return {timeline: this.timeline.childElementCount, plans: this.plans.size, plan_rows: this.planBody.childElementCount,
            assets: this.folded.size};
  }

  onEvent({seq, type, event}) {
    const data = event.data && typeof event.data === "object" ? event.data : {};
    const name = type.startsWith(P) ? type.slice(P.length) : type;
    const planId = typeof data.plan_id === "string" && data.plan_id ? data.plan_id : null;
    if (Object.hasOwn(STATUS, name) && planId) this.updatePlan(planId, STATUS[name](data), event.time);
    if (!this.everything && (PLUMBING.has(type) || (name === "policy.analyze.replied.v1" && !data.verdict && !data.error))) return;
    if (name === "telemetry.reported.v1" && !this.everything && this.foldTelemetry(String(data.asset))) return;
    const [stage, describe] = (Object.hasOwn(FORMATS, name) && FORMATS[name]) ||
      [type.startsWith(P) ? name.split(".")[0] : "event", () => `${type} from ${event.source}`];
    let text;
    try {
      text = describe(data);
    } catch {
      text = short(data);
    }
    const row = el("li", {class: `stage-${stage}`, dataType: type, dataSeq: seq, dataPlan: planId,
                          dataSeen: (Date.now() / 1000).toFixed(3)},
                   el("time", {text: clock((Date.parse(event.time) || Date.now()) / 1000)}),
                   el("span", {class: "stage", text: stage}), el("span", {class: "text", text}));
    if (planId) row.addEventListener("click", () => this.openTrace(planId));
    this.timeline.prepend(row);
    while (this.timeline.childElementCount > MAX_TIMELINE) this.timeline.lastElementChild.remove();
  }

  foldTelemetry(asset) {
    const now = Date.now();
    if (now - (this.folded.get(asset) ?? -Infinity) < TELEMETRY_EVERY_MS) return true;
    this.folded.delete(asset);  // re-inserted last: the map's first entries are the stalest
    this.folded.set(asset, now);
    while (this.folded.size > MAX_ASSETS) this.folded.delete(this.folded.keys().next().value);
    return false;
  }

  updatePlan(id, change, time) {
    const plan = this.plans.get(id) || {plan_id: id, status: "Queued"};
    // A late event does not undo a final status (a plan's second knob result, a replayed proposal).
    const final = ["Discarded", "Success", "Failed"].includes(plan.status);
    if (final && change.status !== "Failed") delete change.status;
    Object.assign(plan, change, {at: time || plan.at});
    if (!this.plans.has(id)) {
      this.plans.set(id, plan);
      while (this.plans.size > MAX_PLANS) {
        const [oldest, gone] = this.plans.entries().next().value;
        if (gone.row) gone.row.remove();
        this.plans.delete(oldest);
      }
    }
    const why = plan.status === "Discarded" ? `lost to ${String(plan.winner).slice(0, 8)}: ${plan.reason}`
      : plan.reason || plan.result || short(plan.mechanisms || {}, 60);
    const row = el("tr", {class: `plan status-${String(plan.status).toLowerCase()}`, dataPlan: id, dataStatus: plan.status,
                          onclick: () => this.openTrace(id)},
                   el("td", {class: "mono", text: id.slice(0, 8)}), el("td", {text: plan.policy || ""}),
                   el("td", {text: plan.asset || ""}), el("td", {class: "status", text: plan.status}),
                   el("td", {class: "why", text: short(why || "", 120)}));
    if (plan.row && plan.row.isConnected) plan.row.replaceWith(row);
    else this.planBody.prepend(row);
    plan.row = row;
  }

  async openTrace(id) {
    this.trace.hidden = false;
    this.trace.scrollIntoView({block: "nearest"});
    replace(this.trace, el("h3", {text: `plan ${id.slice(0, 8)}: tracing…`}));
    let doc;
    try {
      doc = await get(`trace/${encodeURIComponent(id)}`);
    } catch (error) {
      replace(this.trace, el("h3", {text: `plan ${id.slice(0, 8)}`}), el("p", {class: "error", text: error.message}));
      return;
    }
    const events = doc.events.slice(0, MAX_TRACE_EVENTS);
    const depth = new Map();
    for (const e of events) depth.set(e.id, e.parent && depth.has(e.parent) ? depth.get(e.parent) + 1 : 0);
    const rows = events.map((e) => el("tr", {dataType: e.type},
      el("td", {class: "num", text: `+${number(e.offset_ms)} ms`}),
      el("td", {class: "num", text: e.parent ? `${number(e.latency_ms)} ms` : ""}),
      el("td", {class: "chain", style: {paddingLeft: `${0.3 + depth.get(e.id) * 1.1}em`}, text: e.type.replace(P, "")}),
      el("td", {class: "small", text: e.via ? `${e.via.split("/").pop()} (${e.by})` : ""}),
      el("td", {class: "small", text: short(e.summary, 80)})));
    replace(this.trace,
      el("div", {class: "trace-head"},
         el("h3", {text: `plan ${id.slice(0, 8)}: ${events.length} events, ${number(doc.end_to_end_ms)} ms end to end`}),
         el("button", {type: "button", text: "close", onclick: () => { this.trace.hidden = true; }})),
      el("p", {class: "small mono", text: `trace ${doc.trace_id}`}),
      table(["at", "hop", "event", "via", "says"], rows, {id: "trace-table", dataPlan: id}));
  }
}
