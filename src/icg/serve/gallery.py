"""The gallery page: pick an item by title, pick users (or type a profile), see reference vs personal covers.

One self-contained HTML document (inline CSS and vanilla JS, no external requests), kept in a Python string
so it ships with the wheel without packaging rules. It talks only to this server's JSON API, writes untrusted
text with `textContent` (never `innerHTML`), and retries a 503 after the server's `Retry-After`.
"""

from __future__ import annotations

GALLERY_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

GALLERY_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ICG cover gallery</title>
<style>
  :root { color-scheme: light; font-family: system-ui, sans-serif; }
  body { margin: 0; background: #f4f4f6; color: #1d1d1f; }
  header { padding: .6rem 1.2rem; background: #fff; border-bottom: 1px solid #ddd; display: flex;
           justify-content: space-between; align-items: baseline; gap: 1rem; }
  header h1 { font-size: 1.1rem; margin: 0; }
  #info { color: #555; font-size: .85rem; }
  main { max-width: 72rem; margin: 1rem auto; padding: 0 1rem; }
  .pick { display: grid; grid-template-columns: 1fr 1.3fr .8fr; gap: 1rem; }
  .panel { background: #fff; border: 1px solid #ddd; border-radius: .5rem; padding: .8rem 1rem; }
  .panel h2 { font-size: .95rem; margin: 0 0 .5rem; }
  input[type=search], input[type=text], input[type=number] { font-size: .95rem; padding: .35rem;
           width: 100%; box-sizing: border-box; }
  ul.results { list-style: none; margin: .4rem 0 0; padding: 0; max-height: 14rem; overflow-y: auto; }
  ul.results button { width: 100%; text-align: left; border: 0; background: none; padding: .3rem .4rem;
           cursor: pointer; border-radius: .3rem; font-size: .9rem; }
  ul.results button:hover, ul.results button[aria-pressed=true] { background: #e4e9ff; }
  #user-list { max-height: 14rem; overflow-y: auto; margin-top: .4rem; font-size: .88rem; }
  #user-list label { display: block; padding: .15rem 0; }
  .row { display: flex; gap: .4rem; margin-top: .5rem; }
  .row input { flex: 1; }
  button.primary { font-size: 1rem; padding: .5rem 1.1rem; cursor: pointer; margin-top: .6rem; width: 100%; }
  #selected-item { font-weight: 600; margin-top: .5rem; min-height: 1.2em; }
  #status { color: #555; font-size: .85rem; min-height: 1.2em; margin-top: .4rem; }
  #error { color: #b00020; min-height: 1.2em; margin-top: .4rem; font-size: .9rem; }
  #results { margin-top: 1rem; }
  #prompt { font-family: ui-monospace, monospace; background: #eef3ff; padding: .4rem .6rem;
            border-radius: .3rem; word-break: break-word; }
  #grid { display: flex; flex-wrap: wrap; gap: 1rem; }
  figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: .5rem; padding: .5rem;
           width: 200px; }
  figure img { width: 192px; height: 192px; display: block; image-rendering: pixelated; background: #e8e8ec;
               object-fit: contain; }
  figure.reference { border-color: #3b5bdb; }
  figcaption { font-size: .8rem; margin-top: .3rem; word-break: break-word; }
  figcaption .prompt { display: block; color: #3b5bdb; font-family: ui-monospace, monospace;
                       margin-top: .2rem; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<header><h1>ICG cover gallery</h1><span id="info"></span></header>
<main>
  <section class="pick">
    <div class="panel">
      <h2>1. Item</h2>
      <input id="item-q" type="search" placeholder="search titles, e.g. toy story" autocomplete="off">
      <ul id="item-results" class="results"></ul>
      <div id="selected-item"></div>
    </div>
    <div class="panel">
      <h2>2. Users</h2>
      <input id="user-q" type="search" placeholder="filter by id or profile (e.g. writer)" autocomplete="off">
      <div id="user-list"></div>
      <div class="row">
        <input id="profile" type="text" maxlength="300"
               placeholder="or a profile: a 30-year-old female writer">
        <button id="add-profile" type="button">add</button>
      </div>
    </div>
    <div class="panel">
      <h2>3. Generate</h2>
      <label>seed <input id="seed" type="number" min="0" value="0"></label>
      <label>steps <input id="steps" type="number" min="1"></label>
      <button id="generate" class="primary" type="button">Generate covers</button>
      <div id="status" aria-live="polite"></div>
      <div id="error" role="alert"></div>
    </div>
  </section>
  <section id="results" hidden>
    <h2 id="result-title"></h2>
    <p>explicit prompt (from the reference cover): <span id="prompt"></span></p>
    <div id="grid"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_USERS = 8;
let item = null;
let personalized = true;
const extraProfiles = [];

function showError(text) { $("error").textContent = text || ""; }

function describe(body, status) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => (d.loc || []).slice(-1)[0] + ": " + d.msg).join("; ");
  }
  if (body && typeof body.detail === "string") return body.detail;
  return "HTTP " + status;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(body, response.status));
  return body;
}

async function loadInfo() {
  const h = await getJSON("healthz");
  $("info").textContent = "preset " + h.preset + (h.dataset ? " \\u00b7 dataset " + h.dataset : "") +
    (h.personalized ? "" : " \\u00b7 not personalized");
  personalized = h.personalized;
  $("steps").value = h.default_steps;
  $("steps").max = h.max_steps;
}

let itemTimer = null;
let itemSearch = 0;  // only the latest search may fill the list (an older answer can arrive later)
async function searchItems() {
  const q = $("item-q").value.trim();
  const mine = ++itemSearch;
  const data = await getJSON("v1/items?limit=15&q=" + encodeURIComponent(q));
  if (mine !== itemSearch) return;
  const list = $("item-results");
  list.replaceChildren();
  for (const it of data.items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "item-result";
    b.dataset.itemId = it.item_id;
    b.setAttribute("aria-pressed", String(item !== null && item.item_id === it.item_id));
    b.textContent = it.title + (it.year ? " (" + it.year + ")" : "") + " \\u2014 " + it.genres.join(", ");
    b.addEventListener("click", () => selectItem(it));
    li.append(b);
    list.append(li);
  }
}

function selectItem(it) {
  item = it;
  $("selected-item").textContent = "Selected: " + it.title + (it.year ? " (" + it.year + ")" : "");
  for (const b of document.querySelectorAll(".item-result")) {
    b.setAttribute("aria-pressed", String(b.dataset.itemId === it.item_id));
  }
}

function userBox(value, labelText, kind, checked) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "user-pick";
  box.dataset.kind = kind;
  box.value = value;
  box.checked = checked;
  label.append(box, " " + labelText);
  return label;
}

let userSearch = 0;
async function loadUsers() {
  const q = $("user-q").value.trim();
  const mine = ++userSearch;
  const data = await getJSON("v1/users?limit=30&q=" + encodeURIComponent(q));
  if (mine !== userSearch) return;
  const boxes = [...document.querySelectorAll(".user-pick:checked")];
  const chosen = new Set(boxes.map((b) => b.dataset.kind + b.value));
  const list = $("user-list");
  list.replaceChildren();
  for (const p of extraProfiles) {
    list.append(userBox(p, "profile: " + p, "profile", chosen.has("profile" + p)));
  }
  for (const u of data.users) {
    if (!u.known) continue;
    list.append(userBox(u.user_id, "user " + u.user_id + " \\u2014 " + (u.profile || ""), "user",
                        chosen.has("user" + u.user_id)));
  }
}

function addProfile() {
  const p = $("profile").value.trim();
  if (!p) return;
  if (!extraProfiles.includes(p)) extraProfiles.unshift(p);
  $("profile").value = "";
  const list = $("user-list");
  list.prepend(userBox(p, "profile: " + p, "profile", true));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function requestCover(form) {
  for (let attempt = 0; attempt < 6; attempt++) {
    const response = await fetch("v1/covers", { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (response.status === 503 || response.status === 429) {  // queue full, or this client's limit
      const wait = Number(response.headers.get("retry-after")) || 1;
      $("status").textContent = "server busy; retrying in " + wait + " s";
      await sleep(wait * 1000);
      continue;
    }
    if (!response.ok) throw new Error(describe(body, response.status));
    return body;
  }
  throw new Error("server stayed busy; try again later");
}

function figure(cls, src, caption, prompt) {
  const fig = document.createElement("figure");
  fig.className = cls;
  const img = document.createElement("img");
  img.alt = caption;
  if (src) img.src = src;
  const cap = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = caption;
  cap.append(name);
  if (prompt !== null) {
    const p = document.createElement("span");
    p.className = "prompt";
    p.textContent = prompt;
    cap.append(p);
  }
  fig.append(img, cap);
  return fig;
}

async function generate() {
  showError("");
  if (!item) { showError("pick an item first"); return; }
  const picks = personalized ? [...document.querySelectorAll(".user-pick:checked")] : [null];
  if (!picks.length) { showError("pick at least one user or add a profile"); return; }
  if (picks.length > MAX_USERS) { showError("pick at most " + MAX_USERS + " users"); return; }
  const button = $("generate");
  button.disabled = true;
  $("status").textContent = "generating " + picks.length + " cover(s)\\u2026";
  $("results").hidden = false;
  $("result-title").textContent = item.title;
  $("prompt").textContent = "";
  const grid = $("grid");
  grid.replaceChildren(figure("reference", item.reference_url, "reference cover", null));
  const jobs = picks.map(async (box) => {
    const who = box === null ? "cover" : (box.dataset.kind === "user" ? "user " : "profile: ") + box.value;
    const fig = figure("cover pending", null, who + " \\u2014 generating\\u2026", "");
    grid.append(fig);
    const form = new FormData();
    form.append("item_id", item.item_id);
    if (box !== null) form.append(box.dataset.kind === "user" ? "user_id" : "profile", box.value);
    form.append("seed", $("seed").value || "0");
    if ($("steps").value) form.append("steps", $("steps").value);
    form.append("format", "json");
    try {
      const cover = await requestCover(form);
      fig.querySelector("img").src = cover.url;
      const note = " \\u00b7 seed " + cover.seed + (cover.cached ? " \\u00b7 cached" : "");
      fig.querySelector(".who").textContent = who + note;
      fig.querySelector(".prompt").textContent = cover.explicit_prompt;
      fig.classList.remove("pending");
      fig.classList.add("done");
      $("prompt").textContent = cover.explicit_prompt;
    } catch (err) {
      fig.querySelector(".who").textContent = who + " \\u2014 failed";
      fig.classList.remove("pending");
      fig.classList.add("failed");
      showError(err.message);
    }
  });
  await Promise.all(jobs);
  $("status").textContent = "done";
  button.disabled = false;
}

$("item-q").addEventListener("input", () => {
  clearTimeout(itemTimer);
  itemTimer = setTimeout(() => searchItems().catch((e) => showError(e.message)), 200);
});
let userTimer = null;
$("user-q").addEventListener("input", () => {
  clearTimeout(userTimer);
  userTimer = setTimeout(() => loadUsers().catch((e) => showError(e.message)), 200);
});
$("add-profile").addEventListener("click", addProfile);
$("profile").addEventListener("keydown", (e) => { if (e.key === "Enter") addProfile(); });
$("generate").addEventListener("click", () => generate().catch((e) => showError(e.message)));
Promise.all([loadInfo(), searchItems(), loadUsers()]).catch((e) => showError(e.message));
</script>
</body>
</html>
"""
