// The dashboard: hash-routed views over the JSON API, called with the project key the user
// logged in with (kept in sessionStorage, sent as the bearer token). Every value from the API
// reaches the page through textContent, never as HTML.
"use strict";

const KEY = "alignd.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = { jobs: 5000, job: 2000 };
let poll = null;  // the shown view's refresh timer
let view = 0;  // counts views shown: a refresh of a view no longer shown stops

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", key = sessionStorage.getItem(KEY) } = {}) {
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${key}` } });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const one of [].concat(value)) {
      if (one !== undefined && one !== null && one !== "") search.append(name, String(one));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// An element whose content is `text`, set as text.
function el(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function link(text, hash) {
  return el("a", text, { href: hash });
}

function rowOf(cells) {
  const row = el("tr");
  for (const cell of cells) {
    const td = el("td");
    td.append(cell instanceof Node ? cell : String(cell ?? ""));  // a string becomes a text node
    row.append(td);
  }
  return row;
}

function fillTable(table, rows) {
  table.querySelector("tbody").replaceChildren(...rows.map(rowOf));
  const empty = table.nextElementSibling;  // a "No ..." line after the table, where it has one
  if (empty && empty.classList.contains("empty")) empty.hidden = rows.length > 0;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function age(seconds) {
  const elapsed = Math.max(0, Date.now() / 1000 - seconds);
  if (elapsed < 90) return `${Math.round(elapsed)} s`;
  if (elapsed < 5400) return `${Math.round(elapsed / 60)} min`;
  if (elapsed < 172800) return `${Math.round(elapsed / 3600)} h`;
  return `${Math.round(elapsed / 86400)} d`;
}

function methodOf(job) {
  const type = job.method.type;
  const algorithm = (job.method[type] || {}).algorithm;
  return algorithm ? `${type} / ${algorithm}` : type;
}

function show(name) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `${name}-view`;
  }
  document.getElementById("nav").hidden = name === "login";
}

function showLogin(message) {
  sessionStorage.removeItem(KEY);
  stopPolling();
  document.getElementById("login-error").textContent = message || "";
  show("login");
  document.getElementById("api-key").focus();
}

function stopPolling() {
  clearTimeout(poll);
  poll = null;
  view += 1;
}

function say(message) {
  document.getElementById("message").textContent = message || "";
}

function failed(error) {
  if (error.status === 401) showLogin(`Your API key was refused: ${error.message}`);
  else say(error.message);
}

// Run `refresh(current)` now and again every `ms` while this view is shown, until it returns
// false or the API refuses the key or no longer has the object. `current()` tells a refresh
// whether its view is still the one shown, before it writes to the page.
function every(ms, refresh) {
  stopPolling();
  const shown = view;
  const current = () => shown === view;
  const tick = async () => {
    let again = true;
    try {
      again = (await refresh(current)) !== false;
    } catch (error) {
      failed(error);
      again = error.status !== 401 && error.status !== 404;
    }
    if (again && current()) poll = setTimeout(tick, ms);
  };
  return tick();
}

// ---- jobs ----

const progressCache = new Map();  // job id -> {step, epoch}: where its epoch series ended

// A running job's last step, and its share of the run where the hyperparameters tell the end
// (every training loop reports `epoch` at each step).
async function progressOf(job) {
  if (job.status === "succeeded") return "100%";
  if (job.status !== "running") return "";
  const known = progressCache.get(job.id) || { step: 0, epoch: null };
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/metrics`;
  const page = await api(path + query({ name: "epoch", after_step: known.step || null }));
  for (const series of page.data) {
    if (!series.steps.length) continue;
    known.step = series.steps.at(-1);
    known.epoch = series.values.at(-1);
  }
  progressCache.set(job.id, known);
  if (!known.step) return "starting";
  // The trainer's own count once it has started; before, the hyperparameters' bound.
  const { max_steps: maxSteps, n_epochs: epochs } = job.hyperparameters;
  const total = job.total_steps || maxSteps;
  const share = total ? known.step / total : known.epoch !== null && epochs
    ? known.epoch / epochs : null;
  return share === null ? `step ${known.step}`
    : `step ${known.step} · ${Math.min(100, Math.round(share * 100))}%`;
}

async function refreshJobs(current) {
  const status = document.getElementById("state-filter").value;
  const page = await api(`/v1/fine_tuning/jobs${query({ limit: 100, status })}`);
  const progress = await Promise.all(page.data.map(progressOf));
  if (!current()) return false;
  fillTable(document.getElementById("jobs-table"), page.data.map((job, i) => [
    link(job.id, `#/jobs/${encodeURIComponent(job.id)}`), el("span", job.status,
      { class: `state ${job.status}` }), methodOf(job), job.model, job.suffix || "",
    age(job.created_at), progress[i],
  ]));
}

function jobsView() {
  show("jobs");
  return every(POLL_MS.jobs, refreshJobs);
}

// ---- one job ----

function jobFacts(job) {
  const facts = [["status", job.status], ["method", methodOf(job)], ["model", job.model],
    ["suffix", job.suffix], ["training file", job.training_file],
    ["validation file", job.validation_file], ["created", when(job.created_at)],
    ["finished", when(job.finished_at)], ["fine-tuned model", job.fine_tuned_model],
    ["trained tokens", job.trained_tokens], ["attempts", job.attempts],
    ["hyperparameters", JSON.stringify(job.hyperparameters)],
    ...Object.entries(job.metadata || {}).map(([name, value]) => [`metadata ${name}`, value]),
    ["error", job.error && job.error.message]];
  document.getElementById("job-facts").replaceChildren(...facts
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([name, value]) => [el("dt", name), el("dd", value, { "data-fact": name })]));
}

let shownCharts = null;  // the last job page's

function jobView(jobId) {
  show("job");
  document.getElementById("job-id").textContent = jobId;
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  if (shownCharts) shownCharts.clear();
  const charts = new MetricCharts(document.getElementById("charts"));
  shownCharts = charts;
  document.getElementById("charts-empty").hidden = false;
  document.getElementById("job-facts").replaceChildren();
  fillTable(document.getElementById("checkpoints-table"), []);
  const eventRows = document.querySelector("#events-table tbody");
  eventRows.replaceChildren();
  const cancel = document.getElementById("cancel-job");
  let attempts = null;
  let lastEvent = null;

  cancel.onclick = async () => {
    if (!window.confirm(`Cancel job ${jobId}?`)) return;
    cancel.disabled = true;
    try {
      jobFacts(await api(`${path}/cancel`, { method: "POST" }));
    } catch (error) {
      say(error.message);
    }
  };

  return every(POLL_MS.job, async (current) => {
    const newEvents = lastEvent ? { order: "asc", after: lastEvent, limit: 1000 } : { limit: 100 };
    const [job, metrics, events, checkpoints] = await Promise.all([
      api(path), api(`${path}/metrics${query({ after_step: charts.lastStep || null })}`),
      api(`${path}/events${query(newEvents)}`), api(`${path}/checkpoints`)]);
    if (!current()) return false;
    jobFacts(job);
    cancel.hidden = TERMINAL.has(job.status);
    cancel.disabled = job.cancel_requested;
    cancel.textContent = job.cancel_requested ? "Cancellation requested" : "Cancel job";
    const resumed = attempts !== null && job.attempts !== attempts;
    attempts = job.attempts;
    if (resumed) {  // the new attempt re-runs steps from its checkpoint
      charts.clear();
      return true;  // the next refresh draws every point again
    }
    charts.add(metrics.data);
    document.getElementById("charts-empty").hidden = charts.charts.size > 0;
    for (const event of lastEvent ? events.data : events.data.reverse()) {
      eventRows.prepend(rowOf([when(event.created_at), event.level, event.type, event.message]));
      lastEvent = event.id;
    }
    fillTable(document.getElementById("checkpoints-table"), checkpoints.data.map((c) => [
      c.step_number, c.fine_tuned_model_checkpoint, JSON.stringify(c.metrics),
      when(c.created_at)]));
    return !TERMINAL.has(job.status);
  });
}

// ---- registry and files ----

async function modelsView() {
  show("models");
  stopPolling();
  const models = (await api("/v1/models")).data;
  fillTable(document.getElementById("models-table"), models.map((m) => [
    m.id, m.kind, m.base_model || "",
    m.job_id ? link(m.job_id, `#/jobs/${encodeURIComponent(m.job_id)}`) : "", m.owned_by,
    when(m.created)]));
}

async function filesView() {
  show("files");
  stopPolling();
  const files = (await api(`/v1/files${query({ limit: 1000 })}`)).data;
  fillTable(document.getElementById("files-table"), files.map((f) => [
    f.id, f.filename, f.purpose, f.line_count, f.bytes, when(f.created_at)]));
}

// ---- routing and login ----

async function route() {
  if (!sessionStorage.getItem(KEY)) return showLogin();
  const [, page, id] = location.hash.split("/");
  say("");
  try {
    if (page === "jobs" && id) await jobView(decodeURIComponent(id));
    else if (page === "models") await modelsView();
    else if (page === "files") await filesView();
    else await jobsView();
  } catch (error) {
    failed(error);
  }
}

async function logIn(event) {
  event.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  try {
    await api("/v1/fine_tuning/jobs?limit=1", { key });
  } catch (error) {
    const why = error.status === 401 ? "This API key was not accepted" : "Could not log in";
    showLogin(`${why}: ${error.message}`);
    return;
  }
  sessionStorage.setItem(KEY, key);
  document.getElementById("api-key").value = "";
  document.getElementById("login-error").textContent = "";
  if (!location.hash || location.hash === "#/login") location.hash = "#/jobs";
  else route();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", logIn);
  document.getElementById("logout").addEventListener("click", () => showLogin("Logged out."));
  document.getElementById("state-filter").addEventListener("change", () => jobsView());
  window.addEventListener("hashchange", route);
  route();
});
