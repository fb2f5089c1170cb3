// Requests to the northbound API with the bearer token; the token comes once from the URL's fragment
// (`#token=...`, never sent to a server) or the token form, and is kept in this tab's sessionStorage only.
const KEY = "mapemesh.token";
export const BASE = new URL("..", document.baseURI);  // the API's root (the page is at /ui/)

export class Refused extends Error {}

export function takeToken() {
  const found = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (found) {
    let token = null;
    try {
      token = decodeURIComponent(found[1]);
    } catch {
      token = null;  // a mangled link: ask for the token instead
    }
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
    history.replaceState(null, "", location.pathname + location.search);  // not left in the address bar
  }
  return sessionStorage.getItem(KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(KEY, token);
  else sessionStorage.removeItem(KEY);
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function headers(extra = {}) {
  return {Authorization: `Bearer ${token() || ""}`, ...extra};
}

export async function call(method, path, {signal} = {}) {
  const response = await fetch(new URL(path, BASE), {method, headers: headers({Accept: "application/json"}),
                                                     cache: "no-store", signal});
  if (response.status === 401) throw new Refused("the API refused the token (401)");
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? JSON.stringify(body.detail) : response.statusText;
    throw new Error(`${method} ${path} answered ${response.status}: ${detail}`);
  }
  return body;
}

export const get = (path, options) => call("GET", path, options);
export const put = (path, options) => call("PUT", path, options);
