// The demo page: one image, classified through /v1/classify; nothing is fetched from
// anywhere but this server. Every text from the server goes in through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let served = null; // GET /v1/models
let image = null; // the chosen File

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function option(select, value, label = value) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  select.append(o);
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models");
  } catch (err) {
    setStatus(`cannot reach the server (${err.message}); retrying`, true);
    setTimeout(loadModels, 2000);
    return;
  }
  if (response.status === 503) {
    setStatus("the server is loading its models; retrying");
    setTimeout(loadModels, 1000);
    return;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  served = await response.json();
  $("device").textContent = served.device;
  for (const m of served.models) option($("model"), m.name);
  for (const p of served.precisions) option($("precision"), p);
  option($("precision"), "auto");
  $("precision").value = served.default_precision;
  modelChanged();
  setStatus("");
  updateButtons();
}

function currentModel() {
  return served.models.find((m) => m.name === $("model").value);
}

function modelChanged() {
  const model = currentModel();
  const k = $("k");
  k.replaceChildren();
  $("k-field").hidden = model.experts === null;
  if (model.experts === null) return;
  option(k, "auto", "auto");
  for (let i = 1; i <= model.experts; i++) option(k, String(i));
  k.value = String(model.k);
}

function updateButtons() {
  const ready = served !== null && image !== null;
  $("classify").disabled = !ready;
  $("compare").disabled = !ready;
}

function chooseImage(file) {
  if (!file) return;
  image = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  setStatus(file.name);
  updateButtons();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error) return `${response.status}: ${body.error}`;
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

async function classify(precision) {
  const query = new URLSearchParams({ model: $("model").value, precision });
  if (!$("k-field").hidden) query.set("k", $("k").value);
  if ($("deadline").value) query.set("deadline_ms", $("deadline").value);
  const form = new FormData();
  form.append("image", image, image.name);
  const response = await fetch(`/v1/classify?${query}`, { method: "POST", body: form });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

function barRow(name, value, fraction) {
  const li = document.createElement("li");
  li.className = "row";
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  label.title = name;
  const number = document.createElement("span");
  number.className = "value";
  number.textContent = value;
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  bar.append(fill);
  li.append(label, number, bar);
  return li;
}

function card(answer, asked) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const chosen = asked === "auto" ? `${answer.precision} (auto)` : answer.precision;
  node.dataset.precision = answer.precision;
  node.querySelector(".title").textContent = `${answer.model} at ${chosen}`;
  const meta = [`version ${answer.version}`];
  if (answer.k !== undefined && answer.k !== null) meta.push(`k = ${answer.k}`);
  if (answer.dual_module) meta.push(`dual-module: ${answer.dual_module.join(", ")}`);
  node.querySelector(".meta").textContent = meta.join(" · ");

  const predictions = node.querySelector(".predictions");
  for (const p of answer.predictions) {
    const li = barRow(p.label, `${(p.score * 100).toFixed(1)}%`, p.score);
    li.classList.add("prediction");
    predictions.append(li);
  }
  if (answer.experts) {
    const box = node.querySelector(".experts");
    box.hidden = false;
    const list = box.querySelector("ol");
    for (const e of answer.experts) {
      list.append(barRow(`expert ${e.expert}`, e.weight.toFixed(3), e.weight));
    }
  }
  for (const cell of node.querySelectorAll(".timings td")) {
    cell.textContent = `${answer.timings_ms[cell.dataset.t].toFixed(1)} ms`;
  }
  return node;
}

async function run(precisions) {
  $("classify").disabled = $("compare").disabled = true;
  $("results").replaceChildren();
  setStatus("classifying…");
  try {
    // One after another, so the timings side by side are not of runs competing.
    for (const precision of precisions) {
      $("results").append(card(await classify(precision), precision));
    }
    setStatus(`${image.name}: done`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    updateButtons();
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => chooseImage(e.target.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseImage(e.dataTransfer.files[0]);
  });
  $("model").addEventListener("change", modelChanged);
  $("classify").addEventListener("click", () => run([$("precision").value]));
  $("compare").addEventListener("click", () => run(served.precisions));
  loadModels();
}

setUp();
