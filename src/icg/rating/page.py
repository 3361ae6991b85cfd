"""The rater's page: one self-contained HTML document (inline CSS and JS, no external requests).

It lives in a Python string, not a package-data file, so it ships with the wheel without packaging rules. The
script only ever receives image ids, captions and counts from the server; it writes untrusted text with
`textContent`, never `innerHTML`.
"""

from __future__ import annotations

import html

PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { color-scheme: light; font-family: system-ui, sans-serif; }
  body { margin: 0; background: #f4f4f6; color: #1d1d1f; }
  header { display: flex; justify-content: space-between; align-items: center; gap: 1rem;
           padding: .6rem 1.2rem; background: #fff; border-bottom: 1px solid #ddd; }
  header h1 { font-size: 1.05rem; margin: 0; }
  #progress { font-variant-numeric: tabular-nums; font-weight: 600; }
  main { max-width: 40rem; margin: 1.5rem auto; padding: 0 1rem; text-align: center; }
  .panel { background: #fff; border: 1px solid #ddd; border-radius: .6rem; padding: 1.4rem; }
  [hidden] { display: none !important; }
  #cover { width: min(24rem, 90vw); aspect-ratio: 1; object-fit: contain; background: #e8e8ec;
           border-radius: .4rem; display: block; margin: 0 auto; }
  #caption { min-height: 1.4em; margin: .7rem 0 .2rem; font-weight: 600; }
  .question { margin: .4rem 0 1rem; }
  .scale { display: flex; gap: .8rem; justify-content: center; }
  .scale button { min-width: 6.5rem; padding: .7rem .9rem; font-size: 1rem; border-radius: .5rem;
                  border: 2px solid #3b5bdb; background: #fff; color: #1d1d1f; cursor: pointer; }
  .scale button:hover, .scale button:focus-visible { background: #3b5bdb; color: #fff; outline: none; }
  .scale button:disabled { opacity: .5; cursor: wait; }
  .scale b { display: block; font-size: 1.4rem; }
  .hint { color: #666; font-size: .85rem; margin-top: .9rem; }
  #error { color: #b00020; min-height: 1.2em; margin-top: .8rem; }
  input { font-size: 1rem; padding: .5rem; width: 14rem; }
  .primary { font-size: 1rem; padding: .5rem 1.1rem; margin-left: .4rem; cursor: pointer; }
  .link { background: none; border: none; color: #3b5bdb; text-decoration: underline; cursor: pointer; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <div><span id="rater-label"></span>
  <button id="switch" class="link" type="button" hidden>change rater</button>
  <span id="progress" aria-live="polite"></span></div>
</header>
<main>
  <section id="login" class="panel">
    <p>Enter the invite code you were given (or open your invite link). You will see __TOTAL__ covers one
       at a time in a random order; rate each on a 1&ndash;3 scale.</p>
    <form id="login-form">
      <input id="token" name="token" maxlength="64" autocomplete="off" placeholder="invite code" required>
      <button class="primary" type="submit">Start</button>
    </form>
  </section>
  <section id="rate" class="panel" hidden>
    <img id="cover" alt="cover to rate">
    <div id="caption"></div>
    <p class="question">__QUESTION__</p>
    <div class="scale" role="group" aria-label="score">
      <button type="button" data-score="1"><b>1</b>__LABEL1__</button>
      <button type="button" data-score="2"><b>2</b>__LABEL2__</button>
      <button type="button" data-score="3"><b>3</b>__LABEL3__</button>
    </div>
    <p class="hint">Keyboard: press 1, 2 or 3.</p>
  </section>
  <section id="done" class="panel" hidden>
    <h2>Thank you!</h2>
    <p id="done-text">You have rated every cover.</p>
  </section>
  <div id="error" role="alert"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "icg-rater";
const state = { token: "", rater: "", queue: [], total: 0, done: 0, busy: false };

function show(which) {
  for (const id of ["login", "rate", "done"]) $(id).hidden = id !== which;
}
function setError(text) { $("error").textContent = text || ""; }
function describe(body, status) {
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
  }
  if (body && typeof body.detail === "string") return body.detail;
  return "request failed (HTTP " + status + ")";
}
async function call(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error(describe(body, response.status));
  return body;
}
function updateProgress() {
  $("progress").textContent = state.total ? state.done + " / " + state.total : "";
  $("rater-label").textContent = state.rater ? "Rater: " + state.rater : "";
  $("switch").hidden = !state.rater;
}
function showNext() {
  updateProgress();
  if (document.activeElement) document.activeElement.blur();  // Enter/Space must not re-rate the next cover
  if (state.queue.length === 0) {
    $("done-text").textContent = "You have rated all " + state.total + " covers.";
    show("done");
    return;
  }
  const item = state.queue[0];
  $("cover").src = item.url;
  $("caption").textContent = item.caption || "";
  if (state.queue.length > 1) { const pre = new Image(); pre.src = state.queue[1].url; }
  show("rate");
  setBusy(false);
}
function setBusy(busy) {
  state.busy = busy;
  for (const b of document.querySelectorAll(".scale button")) b.disabled = busy;
}
async function start(token) {
  setError("");
  try {
    const data = await call("api/queue?token=" + encodeURIComponent(token));
    state.token = token;
    state.rater = data.rater;
    state.queue = data.remaining;
    state.total = data.total;
    state.done = data.done;
    localStorage.setItem(KEY, token);
    showNext();
  } catch (e) {
    setError(e.message);
    show("login");
  }
}
async function rate(score) {
  if (state.busy || state.queue.length === 0) return;
  setBusy(true);
  setError("");
  try {
    const data = await call("api/ratings", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: state.token, image_id: state.queue[0].id, score: score }),
    });
    state.queue.shift();
    state.done = data.done;
    showNext();
  } catch (e) {
    setError(e.message);
    setBusy(false);
  }
}
$("cover").addEventListener("error", () => setError("This cover could not be loaded; reload the page."));
$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) start(token);
});
for (const b of document.querySelectorAll(".scale button")) {
  b.addEventListener("click", () => rate(Number(b.dataset.score)));
}
document.addEventListener("keydown", (event) => {
  if ($("rate").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["1", "2", "3"].includes(event.key)) { event.preventDefault(); rate(Number(event.key)); }
});
$("switch").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  Object.assign(state, { token: "", rater: "", queue: [], total: 0, done: 0 });
  updateProgress();
  $("token").value = "";
  show("login");
});
const invited = new URLSearchParams(location.search).get("token");
if (invited) history.replaceState(null, "", location.pathname);  // the code leaves the address bar
const saved = invited || localStorage.getItem(KEY);
if (saved) start(saved); else show("login");
</script>
</body>
</html>
"""

DEFAULT_QUESTION = "How good is this cover for the movie?"
DEFAULT_LABELS = ("poor", "acceptable", "good")


def render_page(
    *, title: str, total: int, question: str = DEFAULT_QUESTION, labels: tuple[str, str, str] = DEFAULT_LABELS
) -> str:
    """The page with its texts filled in (HTML-escaped)."""
    values = {
        "__TITLE__": title,
        "__TOTAL__": str(total),
        "__QUESTION__": question,
        "__LABEL1__": labels[0],
        "__LABEL2__": labels[1],
        "__LABEL3__": labels[2],
    }
    page = PAGE_TEMPLATE
    for key, value in values.items():
        page = page.replace(key, html.escape(value))
    return page
