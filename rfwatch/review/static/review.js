// rfwatch review page: the JSON API in app.py, plain DOM, no build step.
"use strict";

const grid = document.getElementById("grid");
const count = document.getElementById("count");
const message = document.getElementById("message");
const template = document.getElementById("card");

let items = [];          // what /api/items said last
let selected = null;     // id of the selected item
const picked = new Map(); // id -> Set of classes toggled on a multi-label item
const deciding = new Set();  // ids whose decision is on its way
// ids decided here -> the number of the last list asked for then: a list asked for before the decision may
// still name them, and must not bring them back; one asked for after it no longer does.
const decided = new Map();
let asked = 0;    // lists asked for
let shown = 0;    // the latest list shown: an older one that arrives late is dropped

function say(text) { message.textContent = text || ""; }

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  let doc = {};
  try { doc = await response.json(); } catch (e) { /* not JSON */ }
  return { status: response.status, doc };
}

async function decide(item, kind, classes) {
  if (deciding.has(item.id)) return;
  deciding.add(item.id);
  const body = kind === "reject" ? {} : item.multi_label ? { classes } : { class: classes[0] };
  let status, doc;
  try {
    ({ status, doc } = await post(`/api/items/${item.id}/${kind}`, body));
  } catch (e) {
    status = 0;
    doc = { error: "cannot reach rfwatch; try again" };
  }
  deciding.delete(item.id);
  if (status === 200) {
    decided.set(item.id, asked);
    const index = items.findIndex((i) => i.id === item.id);
    items = items.filter((i) => i.id !== item.id);
    picked.delete(item.id);
    if (selected === item.id) selected = items.length ? items[Math.min(index, items.length - 1)].id : null;
    say(kind === "reject" ? `${item.name}: rejected` : `${item.name}: ${classes.join(", ") || "no class"}`);
    render();
  } else {
    say(`${item.name}: ${doc.error || "HTTP " + status}`);
    refresh();
  }
}

// Every waiting frame of the item's sequence labelled cls (each its own decision, made by rfwatch).
async function labelSequence(item, cls) {
  const id = item.sequence.id;
  const frames = items.filter((i) => i.sequence && i.sequence.id === id);
  if (frames.some((i) => deciding.has(i.id))) return;
  frames.forEach((i) => deciding.add(i.id));
  let status, doc;
  try {
    ({ status, doc } = await post(`/api/sequences/${id}/label`, { class: cls }));
  } catch (e) {
    status = 0;
    doc = { error: "cannot reach rfwatch; try again" };
  }
  frames.forEach((i) => deciding.delete(i.id));
  if (status === 200) {
    const done = new Set(doc.labelled);
    for (const fid of done) decided.set(fid, asked);
    items = items.filter((i) => !done.has(i.id));
    say(`sequence ${id}: ${done.size} frame${done.size === 1 ? "" : "s"} ${cls}`);
    render();
  } else {
    say(`sequence ${id}: ${doc.error || "HTTP " + status}`);
  }
  refresh();
}

function label(item, cls) {
  if (!item.multi_label) return decide(item, "label", [cls]);
  const set = picked.get(item.id) || new Set(item.prediction.predicted_classes || []);
  set.has(cls) ? set.delete(cls) : set.add(cls);
  picked.set(item.id, set);
  render();
}

function top3(item) {
  const p = item.prediction.predictions;
  const scores = Array.isArray(p) ? p.map((s) => [s.class, s.confidence])
    : Object.entries(p).map(([name, s]) => [name, s.confidence]);
  return scores.sort((a, b) => b[1] - a[1]).slice(0, 3);
}

function card(item) {
  const node = template.content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  node.classList.toggle("selected", item.id === selected);
  const img = node.querySelector("img");
  img.src = item.image;
  img.alt = item.name;
  const seq = item.sequence;
  node.querySelector(".name").textContent = item.name
    + (seq ? ` \u00b7 sequence ${seq.id}, frame ${seq.frame} of ${seq.frames}: ${seq.class}` : "");
  const list = node.querySelector(".top3");
  for (const [name, confidence] of top3(item)) {
    const li = document.createElement("li");
    li.textContent = `${name} ${(confidence * 100).toFixed(1)} %`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(confidence * 60)}px`;
    li.append(bar);
    list.append(li);
  }
  const chosen = picked.get(item.id) || new Set(item.prediction.predicted_classes || []);
  const buttons = node.querySelector(".classes");
  item.classes.forEach((cls, n) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = n < 9 ? `${n + 1} ${cls}` : cls;
    b.dataset.class = cls;
    if (item.multi_label) b.setAttribute("aria-pressed", chosen.has(cls) ? "true" : "false");
    b.addEventListener("click", () => { selected = item.id; label(item, cls); });
    buttons.append(b);
  });
  const save = node.querySelector(".save");
  save.hidden = !item.multi_label;
  save.addEventListener("click", () => decide(item, "label", [...chosen]));
  node.querySelector(".reject").addEventListener("click", () => decide(item, "reject", []));
  node.addEventListener("click", () => { if (selected !== item.id) { selected = item.id; render(); } });
  return node;
}

function render() {
  count.textContent = `${items.length} file${items.length === 1 ? "" : "s"} waiting`;
  if (selected !== null && !items.some((i) => i.id === selected)) selected = items.length ? items[0].id : null;
  if (selected === null && items.length) selected = items[0].id;
  const nodes = items.map(card);
  if (!nodes.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "Nothing waits for review.";
    nodes.push(p);
  }
  grid.replaceChildren(...nodes);
  const current = grid.querySelector(".card.selected");
  if (current) current.scrollIntoView({ block: "nearest" });
}

async function refresh() {
  try {
    const mine = ++asked;
    const response = await fetch("/api/items", { credentials: "same-origin" });
    if (!response.ok) { say(`cannot list the files: HTTP ${response.status}`); return; }
    const doc = await response.json();
    if (mine < shown) return;
    shown = mine;
    for (const [id, before] of decided) if (mine > before) decided.delete(id);
    const ids = items.map((i) => i.id).join();
    // The selected file decided elsewhere: select the one that takes its place, as after a decision here.
    const index = items.findIndex((i) => i.id === selected);
    items = doc.items.filter((i) => !deciding.has(i.id) && !decided.has(i.id));
    if (index !== -1 && !items.some((i) => i.id === selected)) {
      selected = items.length ? items[Math.min(index, items.length - 1)].id : null;
    }
    if (items.map((i) => i.id).join() !== ids || !grid.children.length) render();
    else count.textContent = `${items.length} file${items.length === 1 ? "" : "s"} waiting`;
  } catch (e) {
    say("cannot reach rfwatch; retrying");
  }
}

function columns() {
  const cards = [...grid.querySelectorAll(".card")];
  if (cards.length < 2) return 1;
  const top = cards[0].offsetTop;
  const n = cards.findIndex((c) => c.offsetTop !== top);
  return n === -1 ? cards.length : n;
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey || !items.length) return;
  const index = Math.max(0, items.findIndex((i) => i.id === selected));
  const item = items[index];
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
  if (event.key in moves) {
    const next = Math.min(items.length - 1, Math.max(0, index + moves[event.key]));
    selected = items[next].id;
    render();
    event.preventDefault();
  } else if (event.shiftKey && /^Digit[1-9]$/.test(event.code) && item.sequence && !item.multi_label) {
    const cls = item.classes[Number(event.code.slice(5)) - 1];
    if (cls !== undefined) labelSequence(item, cls);
    event.preventDefault();
  } else if (/^[1-9]$/.test(event.key)) {
    const cls = item.classes[Number(event.key) - 1];
    if (cls !== undefined) label(item, cls);
    event.preventDefault();
  } else if (event.key === "x" || event.key === "X") {
    decide(item, "reject", []);
    event.preventDefault();
  } else if (event.key === "Enter" && item.multi_label) {
    decide(item, "label", [...(picked.get(item.id) || new Set(item.prediction.predicted_classes || []))]);
    event.preventDefault();
  }
});

refresh();
setInterval(refresh, 2000);  // files added or decided elsewhere show up within two seconds
