// The Continuum view: clusters and their nodes (far-edge devices too), each node's knobs with their current values
// and the components placed there; each application's QoS targets against its measured samples
// (`GET /dashboard/continuum`).
import {get} from "./api.js";
import {sparkline} from "./charts.js";
import {clock, el, knobSummary, number, replace} from "./dom.js";

function node(n) {
  const knobs = Object.entries(n.knobs || {}).map(([knob, k]) =>
    el("li", {dataKnob: knob}, el("strong", {text: knob}), " ",
       el("span", {class: "small", text: knobSummary(k.state || {}).join("; ")}),
       k.updated ? el("span", {class: "small muted", text: ` (${clock(k.updated)})`}) : null));
  const layer = n.far_edge ? "far-edge device" : n.layer || n.node_type || "node";
  return el("div", {class: `node${n.far_edge ? " far-edge" : ""}`, dataNode: n.node},
    el("h4", {}, n.node, " ", el("span", {class: "badge", text: layer})),
    el("p", {class: "small", text: n.apps.length ? `runs ${n.apps.join(", ")}` : "runs no placed component"}),
    knobs.length ? el("ul", {class: "knobs"}, knobs) : el("p", {class: "small muted", text: "no knobs reported"}));
}

function target(app, t) {
  const verdict = t.met === null ? "no samples" : t.met ? "met" : "missed";
  return el("div", {class: `target ${t.met === false ? "missed" : t.met ? "met" : ""}`,
                    dataTarget: `${app}/${t.component}/${t.metric}`},
    el("p", {}, el("strong", {text: `${t.component} ${t.metric}`}),
       ` ${t.relation.replaceAll("_", " ")} ${number(t.target)}: now ${number(t.latest)} (${verdict})`),
    sparkline(t.samples, {target: typeof t.target === "number" ? t.target : null, label: `${app} ${t.metric}`}));
}

export class ContinuumView {
  constructor(root) {
    this.root = root;
  }

  async refresh() {
    this.render(await get("dashboard/continuum"));
  }

  render(doc) {
    const byCluster = new Map(doc.clusters.map((c) => [c.cluster_id, []]));
    const loose = [];
    for (const n of doc.nodes) (byCluster.get(n.cluster) || loose).push(n);
    const clusters = doc.clusters.map((c) => el("section", {class: "cluster", dataCluster: c.cluster_id},
      el("h3", {}, c.cluster_id, " ", el("span", {class: "badge", text: "cluster"})),
      el("p", {class: "small", text: c.apps.length ? `placed here: ${c.apps.join(", ")}` : "nothing placed here"}),
      el("div", {class: "nodes"}, byCluster.get(c.cluster_id).map(node),
         c.nodes.filter((id) => !doc.nodes.some((n) => n.node === id))
           .map((id) => el("div", {class: "node missing", dataNode: id}, el("h4", {text: id}),
                           el("p", {class: "small muted", text: "listed by the cluster, not registered"}))))));
    if (loose.length) {
      clusters.push(el("section", {class: "cluster"}, el("h3", {text: "nodes in no cluster"}),
                       el("div", {class: "nodes"}, loose.map(node))));
    }
    const apps = doc.applications.map((a) => el("section", {class: "app", dataApp: a.app_id},
      el("h3", {}, a.app_id, " ", el("span", {class: "badge", text: a.kind === "ml_model" ? "ML model" : "application"})),
      el("p", {class: "small", text: Object.entries(a.placement).map(([c, where]) =>
        `${c} on ${where.join(", ")}${a.nodes[c] ? ` (node ${a.nodes[c]})` : ""}`).join("; ") || "not placed yet"}),
      a.targets.length ? el("div", {class: "targets"}, a.targets.map((t) => target(a.app_id, t)))
        : el("p", {class: "small muted", text: "no QoS targets declared"})));
    const continua = doc.continuum.map((c) => el("span", {class: "badge", text: `continuum ${c.continuum_id}: ${c.clusters.join(", ")}`}));
    replace(this.root,
      el("div", {class: "continua"}, continua),
      el("h2", {text: "Clusters and nodes"}),
      clusters.length ? clusters : el("p", {class: "muted", text: "no cluster registered"}),
      el("h2", {text: "Applications: targets against measured performance"}),
      apps.length ? apps : el("p", {class: "muted", text: "no application submitted"}));
    this.root.dataset.loaded = "true";
  }
}
