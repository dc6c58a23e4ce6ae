// rfwatch review page: the JSON API in app.py, plain DOM, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const grid = $("grid");
const count = $("count");
const message = $("message");
const template = $("card");

let items = [];          // the page of items shown (what /api/items said last, less those decided here)
let selected = null;     // id of the selected item (the keyboard's)
let threshold = 0.5;     // the multi-label threshold the server uses
let total = 0;           // items the filters match, on every page
let canTakeBack = false;
const picked = new Map(); // id -> Set of classes toggled on a multi-label item
const chosen = new Set(); // ids selected for a bulk label
let anchor = null;        // the last card clicked: shift-click selects from there
const deciding = new Set();  // ids whose decision is on its way
// ids decided here -> the number of the last list asked for then: a list asked for before the decision may
// still name them, and must not bring them back; one asked for after it no longer does.
const decided = new Map();
const taken = [];  // decisions made on this page, newest last: {id, name, what}; "z" takes the newest back
let asked = 0;    // lists asked for
let shown = 0;    // the latest list shown: an older one that arrives late is dropped
// Paging: the cursor each page starts at (null: the first); a filter or sort change starts again at page 1.
let starts = [null];
let pageNo = 0;
let nextCursor = null;
const LIMIT = 60;
window.reviewTimes = { start: performance.now(), firstShown: null };

function say(text) { message.textContent = text || ""; }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

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

function scoresOf(item) {
  const p = item.prediction.predictions;
  const scores = Array.isArray(p) ? p.map((s) => [s.class, s.confidence])
    : Object.entries(p).map(([name, s]) => [name, s.confidence]);
  return scores.sort((a, b) => b[1] - a[1]);
}

function describe(kind, classes) { return kind === "reject" ? "rejected" : classes.join(", ") || "no class"; }

function removeShown(ids) {
  const index = items.findIndex((i) => i.id === selected);
  const before = items.length;
  items = items.filter((i) => !ids.includes(i.id));
  for (const id of ids) { picked.delete(id); chosen.delete(id); decided.set(id, asked); }
  if (ids.includes(selected)) selected = items.length ? items[Math.min(Math.max(index, 0), items.length - 1)].id : null;
  // Only those still shown count down: a list that came while the decision was on its way left it out already.
  total = Math.max(0, total - (before - items.length));
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
    removeShown([item.id]);
    remember([{ id: item.id, name: item.name, what: describe(kind, classes) }]);
    say(`${item.name}: ${describe(kind, classes)}`);
    render();
    if (viewing !== null) showInViewer(selected);
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
    const names = new Map(items.map((i) => [i.id, i.name]));
    removeShown(doc.labelled);
    remember(doc.labelled.map((fid) => ({ id: fid, name: names.get(fid) || `item ${fid}`, what: cls })));
    say(`sequence ${id}: ${plural(doc.labelled.length, "frame")} ${cls}`);
    render();
  } else {
    say(`sequence ${id}: ${doc.error || "HTTP " + status}`);
  }
  refresh();
}

async function decideMany(body, what) {
  const ids = items.filter((i) => chosen.has(i.id)).map((i) => i.id);
  if (!ids.length) return;
  ids.forEach((id) => deciding.add(id));
  let status, doc;
  try {
    ({ status, doc } = await post("/api/decide", { items: ids, ...body }));
  } catch (e) {
    status = 0;
    doc = { error: "cannot reach rfwatch; try again" };
  }
  ids.forEach((id) => deciding.delete(id));
  if (status !== 200) { say(doc.error || `HTTP ${status}`); refresh(); return; }
  const names = new Map(items.map((i) => [i.id, i.name]));
  const done = doc.decided.map((d) => d.id);
  removeShown(done);
  remember(doc.decided.map((d) => ({ id: d.id, name: names.get(d.id), what: d.classes.join(", ") })));
  const skipped = doc.skipped.length ? `; ${doc.skipped.length} skipped (${doc.skipped[0].error})` : "";
  say(`${plural(done.length, "file")} labelled ${what}${skipped}`);
  render();
  refresh();
}

function remember(decisions) {
  taken.push(...decisions);
  showTakeBack();
}

function showTakeBack() {
  const last = taken[taken.length - 1];
  const button = $("take-back");
  button.disabled = !last || !canTakeBack;
  $("last-decision").textContent = last ? `last: ${last.name} (${last.what})` +
    (taken.length > 1 ? `, ${taken.length - 1} before it` : "") : "";
}

async function takeBack() {
  const last = taken[taken.length - 1];
  if (!last || !canTakeBack) return;
  for (let attempt = 0; attempt < 20; attempt++) {
    let status, doc;
    try {
      ({ status, doc } = await post(`/api/items/${last.id}/take-back`));
    } catch (e) {
      say("cannot reach rfwatch; try again");
      return;
    }
    if (status === 200 || (status === 409 && !doc.busy)) {
      taken.pop();
      decided.delete(last.id);
      if (status === 200) { say(`${last.name}: taken back, it waits again`); selected = last.id; pendingSelect = last.id; }
      else say(`${last.name}: ${doc.error}`);
      showTakeBack();
      await refresh();
      return;
    }
    if (!(status === 409 && doc.busy)) { say(`${last.name}: ${doc.error || "HTTP " + status}`); return; }
    say(`${last.name}: ${doc.error}`);  // being applied right now: asked again in a moment
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
let pendingSelect = null;  // an item taken back: selected once a list shows it

function label(item, cls) {
  if (!item.multi_label) return decide(item, "label", [cls]);
  const set = picked.get(item.id) || new Set(item.guess || []);
  set.has(cls) ? set.delete(cls) : set.add(cls);
  picked.set(item.id, set);
  render();
  if (viewing === item.id) showInViewer(item.id);
}

function chosenClasses(item) { return picked.get(item.id) || new Set(item.guess || []); }

// Scores, highest first: a bar each; multi-label with the threshold marked, and the class that decides {class}.
function fillScores(list, item, all) {
  list.replaceChildren();
  const scores = scoresOf(item);
  for (const [name, confidence] of all || item.multi_label ? scores : scores.slice(0, 3)) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "score-text";
    text.textContent = `${name} ${(confidence * 100).toFixed(1)} %`;
    li.append(text);
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(confidence * 100)}%`;
    track.append(bar);
    if (item.multi_label) {
      const mark = document.createElement("span");
      mark.className = "threshold";
      mark.title = `threshold ${(threshold * 100).toFixed(0)} %`;
      mark.style.left = `${threshold * 100}%`;
      track.append(mark);
      if (confidence >= threshold) li.classList.add("above");
    }
    li.append(track);
    if (name === item.class && item.class) {
      const tag = document.createElement("span");
      tag.className = "decides";
      tag.textContent = "{class}";
      tag.title = "the highest-scoring predicted class: the one {class} stands for in the rules";
      li.append(tag);
    }
    list.append(li);
  }
  if (item.multi_label) {
    const li = document.createElement("li");
    li.className = "threshold-note";
    li.textContent = `threshold ${(threshold * 100).toFixed(0)} %`;
    list.append(li);
  }
}

function classButtons(box, item) {
  const on = chosenClasses(item);
  box.replaceChildren();
  item.classes.forEach((cls, n) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = n < 9 ? `${n + 1} ${cls}` : cls;
    b.dataset.class = cls;
    if (item.multi_label) b.setAttribute("aria-pressed", on.has(cls) ? "true" : "false");
    b.addEventListener("click", (event) => { event.stopPropagation(); selected = item.id; label(item, cls); });
    box.append(b);
  });
}

// A frame of a sequence is named with its sequence, its place in it and the sequence's label.
function sequenceNote(item) {
  const seq = item.sequence;
  return seq ? ` \u00b7 sequence ${seq.id}, frame ${seq.frame} of ${seq.frames}: ${seq.class}` : "";
}

function card(item) {
  const node = template.content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  node.classList.toggle("selected", item.id === selected);
  node.classList.toggle("chosen", chosen.has(item.id));
  const pick = node.querySelector(".pick");
  pick.checked = chosen.has(item.id);
  pick.addEventListener("click", (event) => {
    event.stopPropagation();
    if (event.shiftKey) selectRange(item.id); else toggleChosen(item.id);
  });
  const img = node.querySelector("img");
  img.src = item.image;
  img.alt = item.name;
  img.addEventListener("click", (event) => {
    if (event.shiftKey) return;  // a selection: handled by the card
    event.stopPropagation();
    selected = item.id;
    openViewer(item.id);
  });
  node.querySelector(".name").textContent = item.name + sequenceNote(item);
  fillScores(node.querySelector(".top3"), item, false);
  classButtons(node.querySelector(".classes"), item);
  const save = node.querySelector(".save");
  save.hidden = !item.multi_label;
  save.addEventListener("click", (event) => { event.stopPropagation(); decide(item, "label", [...chosenClasses(item)]); });
  node.querySelector(".reject").addEventListener("click", (event) => {
    event.stopPropagation();
    decide(item, "reject", []);
  });
  node.addEventListener("click", (event) => {
    if (event.shiftKey) { selectRange(item.id); return; }
    anchor = item.id;
    if (selected !== item.id) { selected = item.id; render(); }
  });
  return node;
}

function toggleChosen(id) {
  chosen.has(id) ? chosen.delete(id) : chosen.add(id);
  anchor = id;
  render();
}

function selectRange(id) {
  const ids = items.map((i) => i.id);
  const from = ids.indexOf(anchor === null ? id : anchor);
  const to = ids.indexOf(id);
  if (from === -1) chosen.add(id);
  else for (const i of ids.slice(Math.min(from, to), Math.max(from, to) + 1)) chosen.add(i);
  anchor = id;
  selected = id;
  render();
}

function renderBulk() {
  const n = items.filter((i) => chosen.has(i.id)).length;
  $("bulk-count").textContent = n ? `${n} selected:` : "";
  $("select-none").hidden = !n;
  $("accept").hidden = !n;
  const box = $("bulk-classes");
  box.replaceChildren();
  if (!n) return;
  const classes = [];
  for (const i of items) if (chosen.has(i.id)) for (const c of i.classes) if (!classes.includes(c)) classes.push(c);
  for (const cls of classes) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.class = cls;
    b.textContent = `label ${cls}`;
    b.addEventListener("click", () => decideMany({ class: cls }, cls));
    box.append(b);
  }
}

function render() {
  count.textContent = `${plural(total, "file")} waiting`;
  if (pendingSelect !== null && items.some((i) => i.id === pendingSelect)) { selected = pendingSelect; pendingSelect = null; }
  if (selected !== null && !items.some((i) => i.id === selected)) selected = items.length ? items[0].id : null;
  if (selected === null && items.length) selected = items[0].id;
  const nodes = items.map(card);
  if (!nodes.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = total ? "Nothing on this page." : "Nothing waits for review.";
    nodes.push(p);
  }
  grid.replaceChildren(...nodes);
  renderBulk();
  const pages = Math.max(1, Math.ceil(total / LIMIT));
  $("page-info").textContent = `page ${pageNo + 1} of ${Math.max(pages, pageNo + 1)}`;
  $("prev").disabled = pageNo === 0;
  $("next").disabled = nextCursor === null;
  const current = grid.querySelector(".card.selected");
  if (current && viewing === null) current.scrollIntoView({ block: "nearest" });
  if (items.length && window.reviewTimes.firstShown === null) window.reviewTimes.firstShown = performance.now();
}

function query() {
  const params = new URLSearchParams({ limit: String(LIMIT), sort: $("f-sort").value });
  const cls = $("f-class").value, folder = $("f-folder").value;
  const min = $("f-min").value, max = $("f-max").value;
  if (cls) params.set("class", cls);
  if (folder) params.set("folder", folder);
  if (min !== "") params.set("min", String(Number(min) / 100));
  if (max !== "") params.set("max", String(Number(max) / 100));
  if (starts[pageNo]) params.set("cursor", starts[pageNo]);
  return params.toString();
}

function options(select, values) {
  const keep = select.value;
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") === values.join("\n")) return;
  select.replaceChildren(select.options[0]);
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v;
    select.append(o);
  }
  if (keep && !values.includes(keep)) {  // still offered while chosen
    const o = document.createElement("option");
    o.value = o.textContent = keep;
    select.append(o);
  }
  select.value = keep;
}

async function refresh() {
  try {
    const mine = ++asked;
    const response = await fetch(`/api/items?${query()}`, { credentials: "same-origin" });
    if (!response.ok) { say(`cannot list the files: HTTP ${response.status}`); return; }
    const doc = await response.json();
    if (mine < shown) return;
    shown = mine;
    for (const [id, before] of decided) if (mine > before) decided.delete(id);
    threshold = doc.threshold;
    canTakeBack = doc.take_back;
    showTakeBack();
    options($("f-class"), doc.classes);
    options($("f-folder"), doc.folders);
    const ids = items.map((i) => i.id).join();
    // The selected file decided elsewhere: select the one that takes its place, as after a decision here.
    const index = items.findIndex((i) => i.id === selected);
    items = doc.items.filter((i) => !deciding.has(i.id) && !decided.has(i.id));
    total = doc.total - (doc.items.length - items.length);
    nextCursor = doc.next;
    for (const id of [...chosen]) if (!items.some((i) => i.id === id)) chosen.delete(id);
    if (index !== -1 && !items.some((i) => i.id === selected)) {
      selected = items.length ? items[Math.min(index, items.length - 1)].id : null;
    }
    if (items.map((i) => i.id).join() !== ids || !grid.children.length || pendingSelect !== null) render();
    else {
      count.textContent = `${plural(total, "file")} waiting`;
      $("next").disabled = nextCursor === null;
    }
    if (!items.length && pageNo > 0 && !nextCursor) { pageNo -= 1; refresh(); }  // the last page emptied
  } catch (e) {
    say("cannot reach rfwatch; retrying");
  }
}

function restart() {
  starts = [null];
  pageNo = 0;
  chosen.clear();
  items = [];
  refresh();
}

function turn(by) {
  if (by > 0 && nextCursor === null) return;
  if (by > 0) { starts[pageNo + 1] = nextCursor; pageNo += 1; }
  else if (pageNo > 0) pageNo -= 1;
  else return;
  chosen.clear();
  selected = null;
  items = [];
  window.scrollTo(0, 0);
  refresh();
}

function columns() {
  const cards = [...grid.querySelectorAll(".card")];
  if (cards.length < 2) return 1;
  const top = cards[0].offsetTop;
  const n = cards.findIndex((c) => c.offsetTop !== top);
  return n === -1 ? cards.length : n;
}

// --- the full-size view ------------------------------------------------------------------------------------

const viewer = $("viewer");
const stage = $("stage");
const full = $("full");
let viewing = null;  // id of the item shown full size
const view = { scale: 1, fit: 1, x: 0, y: 0 };
window.reviewView = view;

function place() {
  full.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  $("zoom").textContent = `${Math.round(view.scale * 100)} %` + (Math.abs(view.scale - view.fit) < 1e-6 ? " (fit)" : "");
}

function fit() {
  const w = stage.clientWidth, h = stage.clientHeight;
  if (!full.naturalWidth) return;
  view.fit = Math.min(w / full.naturalWidth, h / full.naturalHeight);
  view.scale = view.fit;
  view.x = (w - full.naturalWidth * view.scale) / 2;
  view.y = (h - full.naturalHeight * view.scale) / 2;
  place();
}

function zoomAt(factor, px, py) {
  const scale = Math.min(Math.max(view.scale * factor, view.fit / 2), Math.max(8, view.fit));
  view.x = px - (px - view.x) * (scale / view.scale);
  view.y = py - (py - view.y) * (scale / view.scale);
  view.scale = scale;
  place();
}

function zoomCentre(factor) { zoomAt(factor, stage.clientWidth / 2, stage.clientHeight / 2); }

function pan(dx, dy) { view.x += dx; view.y += dy; place(); }

function openViewer(id) {
  viewer.hidden = false;
  document.body.classList.add("viewing");
  showInViewer(id);
}

function closeViewer() {
  viewer.hidden = true;
  viewing = null;
  document.body.classList.remove("viewing");
  render();
}

function showInViewer(id) {
  const item = items.find((i) => i.id === id);
  if (!item) { closeViewer(); return; }
  const changed = viewing !== id;
  viewing = id;
  $("v-name").textContent = item.name + sequenceNote(item);
  $("v-folder").textContent = item.folder;
  fillScores($("v-scores"), item, true);
  classButtons($("v-classes"), item);
  $("v-save").hidden = !item.multi_label;
  if (changed) {
    full.removeAttribute("src");
    full.alt = item.name;
    $("zoom").textContent = "loading...";
    full.src = item.full;
  }
}

full.addEventListener("load", fit);
window.addEventListener("resize", () => { if (viewing !== null) fit(); });
stage.addEventListener("wheel", (event) => {
  event.preventDefault();
  const r = stage.getBoundingClientRect();
  zoomAt(Math.exp(-event.deltaY * 0.002), event.clientX - r.left, event.clientY - r.top);
}, { passive: false });
stage.addEventListener("dblclick", (event) => {
  const r = stage.getBoundingClientRect();
  // Fit -> full resolution (1:1) at the point clicked; zoomed in -> fit again.
  if (view.scale < 1 - 1e-6) zoomAt(1 / view.scale, event.clientX - r.left, event.clientY - r.top);
  else fit();
});
let drag = null;
stage.addEventListener("pointerdown", (event) => {
  drag = { x: event.clientX, y: event.clientY };
  stage.setPointerCapture(event.pointerId);
  stage.classList.add("dragging");
});
stage.addEventListener("pointermove", (event) => {
  if (!drag) return;
  pan(event.clientX - drag.x, event.clientY - drag.y);
  drag = { x: event.clientX, y: event.clientY };
});
const endDrag = () => { drag = null; stage.classList.remove("dragging"); };
stage.addEventListener("pointerup", endDrag);
stage.addEventListener("pointercancel", endDrag);
$("zoom-in").addEventListener("click", () => zoomCentre(1.25));
$("zoom-out").addEventListener("click", () => zoomCentre(0.8));
$("zoom-fit").addEventListener("click", fit);
$("v-close").addEventListener("click", closeViewer);
$("v-reject").addEventListener("click", () => { const i = items.find((x) => x.id === viewing); if (i) decide(i, "reject", []); });
$("v-save").addEventListener("click", () => {
  const i = items.find((x) => x.id === viewing);
  if (i) decide(i, "label", [...chosenClasses(i)]);
});

// --- controls ------------------------------------------------------------------------------------------------

for (const id of ["f-class", "f-folder", "f-sort"]) $(id).addEventListener("change", restart);
for (const id of ["f-min", "f-max"]) $(id).addEventListener("change", restart);
$("prev").addEventListener("click", () => turn(-1));
$("next").addEventListener("click", () => turn(1));
$("take-back").addEventListener("click", takeBack);
$("select-all").addEventListener("click", () => { items.forEach((i) => chosen.add(i.id)); render(); });
$("select-none").addEventListener("click", () => { chosen.clear(); render(); });
$("accept").addEventListener("click", () => decideMany({ accept: true }, "as the model guessed"));

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  if (event.key === "z" || event.key === "Z") { takeBack(); event.preventDefault(); return; }
  if (viewing !== null) { viewerKey(event); return; }
  if (!items.length) return;
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
    decide(item, "label", [...chosenClasses(item)]);
    event.preventDefault();
  } else if (event.key === "Enter" || event.key === " ") {
    openViewer(item.id);
    event.preventDefault();
  }
});

function viewerKey(event) {
  const item = items.find((i) => i.id === viewing);
  const step = 80;
  const pans = { ArrowRight: [-step, 0], ArrowLeft: [step, 0], ArrowDown: [0, -step], ArrowUp: [0, step] };
  if (event.key === "Escape") closeViewer();
  else if (event.key in pans) pan(...pans[event.key]);
  else if (event.key === "+" || event.key === "=") zoomCentre(1.25);
  else if (event.key === "-" || event.key === "_") zoomCentre(0.8);
  else if (event.key === "0") fit();
  else if (!item) return;
  else if (/^[1-9]$/.test(event.key)) {
    const cls = item.classes[Number(event.key) - 1];
    if (cls !== undefined) label(item, cls);
  } else if (event.key === "x" || event.key === "X") decide(item, "reject", []);
  else if (event.key === "Enter" && item.multi_label) decide(item, "label", [...chosenClasses(item)]);
  else return;
  event.preventDefault();
}

refresh();
setInterval(refresh, 2000);  // files added or decided elsewhere show up within two seconds
