// The dashboard's entry: the token, the four views, polling the visible one, and the live event stream.
import {Refused, get, setToken, takeToken} from "./api.js";
import * as caps from "./caps.js";
import {ContinuumView} from "./continuum.js";
import {LoopView} from "./loop.js";
import {NowView} from "./now.js";
import {PoliciesView} from "./policies.js";
import {EventStream} from "./stream.js";

const $ = (selector) => document.querySelector(selector);
const VIEWS = ["now", "loop", "continuum", "policies"];

function refuse(reason) {
  document.body.dataset.auth = reason ? "refused" : "none";
  $("#views").hidden = true;
  $("#login").hidden = false;
  $("#login-reason").textContent = reason || "This page needs the API's token (DATA_DIR/api.token).";
}

class Dashboard {
  constructor() {
    this.now = new NowView($("#view-now"));
    this.loop = new LoopView($("#view-loop"));
    this.continuum = new ContinuumView($("#view-continuum"));
    this.policies = new PoliciesView($("#view-policies"), (mode, override) => {
      $("#mode-badge").textContent = `mode ${mode}${override ? ", manual override" : ""}`;
    });
    this.active = null;
    this.timer = null;
    this.round = 0;  // one polling chain at a time: a chain of an earlier round stops
    this.stream = null;
    for (const button of document.querySelectorAll("#nav button")) {
      button.addEventListener("click", () => this.show(button.dataset.view));
    }
    window.addEventListener("hashchange", () => this.show(location.hash.slice(1)));
    document.addEventListener("visibilitychange", () => {  // a tab in the background polls nothing
      if (!document.hidden && this.active) this.show(this.active);
    });
  }

  resume(view) {
    const lastId = this.stream ? this.stream.lastId : null;  // a new token resumes where the stream was
    this.halt();
    this.stream = new EventStream({onEvent: (e) => this.onEvent(e), onState: (s, why) => this.onStream(s, why), lastId});
    this.stream.run();
    this.show(view);
  }

  onEvent(event) {
    // Events are anyone's who may post to the broker: one a view cannot read is that event's loss, not the stream's.
    for (const view of [this.loop, this.policies]) {
      try {
        view.onEvent(event);
      } catch (error) {
        console.warn(`event ${event.seq} (${event.type}) not shown: ${error.message}`);
      }
    }
  }

  onStream(state, why) {
    const badge = $("#stream");
    badge.dataset.state = state;
    badge.textContent = state === "open" ? "live" : `${state}${why ? `: ${why}` : ""}`;
    if (state === "refused") this.fail(new Refused(why));
  }

  show(view) {
    if (!VIEWS.includes(view)) view = "now";
    this.active = view;
    for (const name of VIEWS) {
      $(`#view-${name}`).hidden = name !== view;
      $(`#nav button[data-view="${name}"]`).classList.toggle("active", name === view);
    }
    document.body.dataset.view = view;
    if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
    clearTimeout(this.timer);
    this.poll(++this.round);
  }

  async poll(round) {
    const view = this.active;
    const target = this[view];
    if (!target || round !== this.round || document.hidden) return;
    if (target.refresh) {
      try {
        await target.refresh();
        $("#problem").hidden = true;
      } catch (error) {
        if (error instanceof Refused) return this.fail(error);
        $("#problem").hidden = false;
        $("#problem").textContent = error.message;
      }
    }
    if (round === this.round && caps.POLL_MS[view]) this.timer = setTimeout(() => this.poll(round), caps.POLL_MS[view]);
  }

  halt() {
    clearTimeout(this.timer);
    this.round++;
    this.active = null;
    if (this.stream) this.stream.stop();
  }

  fail(error) {
    this.halt();
    setToken(null);
    refuse(`Refused: ${error.message}. Give the token in DATA_DIR/api.token.`);
  }

  sizes() {
    return {...this.loop.sizes(), ...this.now.sizes()};
  }
}

let dashboard = null;

async function start() {
  const hash = location.hash;
  if (!takeToken()) return refuse(null);
  let policies;
  try {
    policies = await get("dashboard/policies");  // the token works: show the views
  } catch (error) {
    if (dashboard) dashboard.halt();
    if (error instanceof Refused) {
      setToken(null);
      return refuse(`Refused: ${error.message}. Give the token in DATA_DIR/api.token.`);
    }
    return refuse(`The API did not answer: ${error.message}`);
  }
  document.body.dataset.auth = "ok";
  $("#login").hidden = true;
  $("#views").hidden = false;
  if (!dashboard) {
    dashboard = new Dashboard();
    window.mapemeshDashboard = {caps, sizes: () => dashboard.sizes(), dashboard};  // for tests and curious operators
  }
  dashboard.policies.render(policies);  // the mode, in the header from the start
  dashboard.resume(VIEWS.find((v) => hash === `#${v}`) || "now");
}

window.addEventListener("hashchange", () => {
  if (/(?:^#|&)token=/.test(location.hash)) start();  // a link with a (new) token, opened in this tab
});
$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("#token-input").value.trim());
  $("#token-input").value = "";
  start();
});
start();
