// The Policies view: the management mode (heuristic or ML) and the manual override, with the controls to change
// them through the API (`PUT /manage/mode/{mode}`, `PUT /manage/override/{on|off}`), and each policy with its
// kind, counts, last verdicts per asset and recent failures (`GET /dashboard/policies`).
import {get, put} from "./api.js";
import {clock, el, replace, table} from "./dom.js";

function verdict(v) {
  const said = v.error ? `failed: ${v.error}` : v.verdict === true ? "needs a plan" : v.verdict === false ? "nothing to do" : "–";
  return el("li", {class: v.error ? "error" : ""}, `${v.asset}: ${said} `, el("span", {class: "muted", text: clock(v.at)}));
}

export class PoliciesView {
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;  // tells the page the mode it now shows
    this.mode = null;
    this.override = null;
    this.message = el("p", {id: "mode-message", class: "small", "aria-live": "polite"});
    this.modeText = el("strong", {id: "mode-current"});
    const button = (id, text, action) => el("button", {type: "button", id, text, onclick: action});
    this.controls = el("div", {class: "card mode", id: "mode"},
      el("h3", {text: "Management mode"}),
      el("p", {}, "now: ", this.modeText),
      el("div", {class: "buttons"},
         button("mode-heuristic", "heuristic", () => this.send("manage/mode/heuristic", "mode heuristic")),
         button("mode-ml", "ML", () => this.send("manage/mode/ml", "mode ML")),
         button("override-on", "override on", () => this.send("manage/override/on", "manual override on")),
         button("override-off", "override off", () => this.send("manage/override/off", "manual override off"))),
      el("p", {class: "small muted", text: "Manual override on: the policies make no plans; operators act by hand."}),
      this.message);
    this.list = el("div");
    replace(root, this.controls, this.list);
  }

  async refresh() {
    this.render(await get("dashboard/policies"));
  }

  async send(path, what) {
    this.message.textContent = `sending ${what}…`;
    try {
      const answer = await put(path);
      this.message.textContent = `${what}: sent to the mesh (event ${answer.event_id.slice(0, 8)})`;
    } catch (error) {
      this.message.textContent = `${what} failed: ${error.message}`;
    }
  }

  showMode(mode, override) {
    this.mode = mode;
    this.override = override;
    this.modeText.textContent = `${mode}${override ? " (manual override)" : ""}`;
    this.controls.dataset.mode = mode;
    this.controls.dataset.override = String(override);
    this.controls.querySelector("#mode-heuristic").classList.toggle("active", mode === "heuristic");
    this.controls.querySelector("#mode-ml").classList.toggle("active", mode === "ml");
    this.controls.querySelector("#override-on").classList.toggle("active", override);
    this.controls.querySelector("#override-off").classList.toggle("active", !override);
    this.onChange(mode, override);
  }

  onEvent({type}) {
    // What the event says is whoever posted it; what the mode is, the API says (the monitor recorded it).
    if (type !== "io.mapemesh.mode.changed.v1") return;
    for (const ms of [300, 1500]) setTimeout(() => this.refresh().catch(() => {}), ms);  // once the monitor has it
  }

  render(doc) {
    this.showMode(doc.mode, doc.manual_override);
    const rows = doc.policies.map((p) => el("tr", {dataPolicy: p.name, class: p.status === "error" ? "not-ready" : ""},
      el("td", {}, el("strong", {text: p.name}), p.core ? el("span", {class: "badge", text: "core"}) : null),
      el("td", {text: p.status === "error" ? `error: ${p.error}` : p.status}),
      el("td", {text: p.kind}), el("td", {text: p.scope || ""}), el("td", {class: "small", text: p.mechanisms.join(", ")}),
      el("td", {class: "num", text: p.analyses}), el("td", {class: "num", text: p.plans}),
      el("td", {class: "num", text: p.failures}),
      el("td", {}, p.verdicts_by_asset.length ? el("ul", {class: "verdicts"}, p.verdicts_by_asset.map(verdict))
        : el("span", {class: "muted", text: p.skipped ? `skipped: ${p.skipped.reason}` : "not asked yet"})),
      el("td", {}, el("ul", {class: "failures"}, p.recent_failures.map((f) =>
        el("li", {class: "error"}, `${clock(f.at)} ${f.asset} (${f.method}): ${f.error}`))))));
    replace(this.list, el("h2", {text: "Policies"}),
            table(["policy", "status", "kind", "scope", "mechanisms", "analyses", "plans", "failures", "last verdicts",
                   "recent failures"], rows, {id: "policies"}));
    this.root.dataset.loaded = "true";
  }
}
