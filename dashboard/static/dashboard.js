// The mqttinfer dashboard: reads the gateway's /fleet/events (Server-Sent
// Events, read with fetch so that a login can go with it) and draws it.
// Everything the service sends is put in the page as text, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const authKey = "mqttinfer.auth";
const history = new Map(); // model -> [{t, rate, p99}]
const historySpan = 120; // seconds of chart
let latest = new Map(); // model -> fleet.Latest
let abort = null;

function authHeader() {
  return sessionStorage.getItem(authKey) || "";
}

function showLogin(message) {
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  clearData();
  setState("logged out", "down");
}

function clearData() {
  for (const id of ["#devices tbody", "#models tbody", "#workers tbody", "#anomalies", "#latest"]) {
    $(id).replaceChildren();
  }
  latest = new Map();
  history.clear();
}

function setState(text, cls) {
  const s = $("#state");
  s.textContent = text;
  s.className = "state " + (cls || "");
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const user = $("#username").value.trim();
  const secret = $("#password").value;
  const value = $("#is-key").checked ? "Bearer " + secret : "Basic " + btoa(unescape(encodeURIComponent(user + ":" + secret)));
  sessionStorage.setItem(authKey, value);
  $("#password").value = "";
  connect();
});

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(authKey);
  if (abort) abort.abort();
  showLogin("");
});

// connect reads /fleet/events until it ends, then connects again.
async function connect() {
  if (abort) abort.abort();
  const ctl = new AbortController();
  abort = ctl;
  const headers = { Accept: "text/event-stream" };
  const auth = authHeader();
  if (auth) headers.Authorization = auth;
  let resp;
  try {
    resp = await fetch("fleet/events", { headers, signal: ctl.signal, cache: "no-store" });
  } catch (e) {
    if (ctl.signal.aborted) return;
    setState("disconnected: retrying", "down");
    setTimeout(connect, 2000);
    return;
  }
  if (resp.status === 401) {
    sessionStorage.removeItem(authKey);
    showLogin(auth ? "Wrong username or password." : "");
    return;
  }
  if (resp.status === 403) {
    sessionStorage.removeItem(authKey);
    showLogin("This user may not watch the fleet: log in as an observer.");
    return;
  }
  if (!resp.ok || !resp.body) {
    setState("error " + resp.status + ": retrying", "down");
    setTimeout(connect, 2000);
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = !auth;
  setState("live", "live");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (ctl.signal.aborted) return;
  setState("disconnected: retrying", "down");
  setTimeout(connect, 2000);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? wrapTd(c) : el("td", c));
  return tr;
}

function wrapTd(node) {
  const td = document.createElement("td");
  td.append(node);
  return td;
}

function age(at) {
  if (!at) return "";
  const s = Math.max(0, (Date.now() - Date.parse(at)) / 1000);
  return s < 1 ? "now" : s < 90 ? Math.round(s) + " s ago" : Math.round(s / 60) + " min ago";
}

function fixed(x, n) {
  return Number(x || 0).toFixed(n);
}

function render(ev) {
  renderDevices(ev.devices || [], ev.untracked);
  renderModels(ev.models || [], ev.at);
  renderWorkers(ev.workers || []);
  renderAnomalies(ev.anomalies || []);
  for (const l of ev.latest || []) latest.set(l.model, l);
  renderLatest();
}

function renderDevices(devices, untracked) {
  const connected = devices.filter((d) => d.connected).length;
  $("#device-count").textContent = `${connected} connected, ${devices.length} tracked` + (untracked ? `, ${untracked} not tracked` : "");
  const rows = devices.map((d) => {
    const lr = d.last_request;
    const res = d.last_result;
    const status = res ? el("span", `${res.status} ${summary(res.model, res.result)}`, res.status === 200 ? "ok" : res.status === 429 ? "warn" : "bad") : el("span", "");
    const th = d.throttle;
    let tokens = el("span", "");
    if (th) {
      tokens = document.createElement("span");
      const bar = el("span", null, "bar");
      const fill = el("span");
      fill.style.width = th.burst ? Math.round((100 * th.tokens) / th.burst) + "%" : "100%";
      bar.append(fill);
      tokens.append(bar, th.rate ? `${fixed(th.tokens, 1)}/${th.burst}` : "unlimited");
    }
    const tr = row([
      d.id,
      el("span", d.connected ? "connected" : "gone", d.connected ? "ok" : "muted"),
      lr ? `${lr.model} ${lr.id} (${age(lr.at)})` : "",
      status,
      tokens,
      th ? `${th.in_flight}/${th.max_in_flight || "∞"}` : "",
      d.requests,
      d.errors,
      d.throttled,
    ]);
    tr.dataset.device = d.id;
    return tr;
  });
  $("#devices tbody").replaceChildren(...rows);
}

// summary is one line that says what a result found.
function summary(model, result) {
  if (!result) return "";
  if (result.error) return `${result.error.type}: ${result.error.message}`;
  const o = result.output || (result.outputs && result.outputs[0] && result.outputs[0].output) || {};
  switch (model) {
    case "anomaly":
      return o.warming_up ? `${o.sensor || ""} ${o.value} warming up` : `${o.sensor || ""} ${o.value} score ${fixed(o.score, 2)}${o.is_anomaly ? " ANOMALY" : ""}`;
    case "detect":
      return (o.detections || []).map((d) => `${d.label} ${fixed(d.score, 2)}`).join(", ") || "nothing";
    case "ocr":
      return JSON.stringify(o.text || "");
    case "vad":
      return `${(o.segments || []).length} speech segment(s)`;
    case "chat":
      return (o.text || "").slice(0, 60);
  }
  return JSON.stringify(o).slice(0, 80);
}

function renderModels(models, at) {
  const t = Date.parse(at) / 1000;
  $("#models tbody").replaceChildren(
    ...models.map((m) => row([m.model, fixed(m.rate, 1), fixed(m.error_rate, 1), fixed(m.p50_ms, 1), fixed(m.p99_ms, 1)]))
  );
  for (const m of models) {
    const h = history.get(m.model) || [];
    h.push({ t, rate: m.rate, p99: m.p99_ms });
    while (h.length && h[0].t < t - historySpan) h.shift();
    history.set(m.model, h);
  }
  drawChart(t);
}

const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function drawChart(now) {
  const c = $("#chart");
  const g = c.getContext("2d");
  const w = c.width, h = c.height, pad = 30;
  g.clearRect(0, 0, w, h);
  let maxRate = 1, maxLat = 1;
  for (const pts of history.values()) for (const p of pts) { maxRate = Math.max(maxRate, p.rate); maxLat = Math.max(maxLat, p.p99); }
  g.strokeStyle = "#d8dce3";
  g.strokeRect(pad, 5, w - 2 * pad, h - pad - 5);
  g.fillStyle = "#6b7280";
  g.font = "11px sans-serif";
  g.fillText(fixed(maxRate, 1) + "/s", 2, 14);
  g.fillText(fixed(maxLat, 0) + "ms", w - pad + 2, 14);
  const x = (t) => pad + ((t - (now - historySpan)) / historySpan) * (w - 2 * pad);
  const yr = (v) => h - pad - (v / maxRate) * (h - pad - 10);
  const yl = (v) => h - pad - (v / maxLat) * (h - pad - 10);
  let i = 0;
  for (const [model, pts] of history) {
    const color = palette[i++ % palette.length];
    for (const [y, dash] of [[yr, []], [(p) => yl(p), [4, 3]]]) {
      g.setLineDash(dash);
      g.strokeStyle = color;
      g.beginPath();
      pts.forEach((p, j) => {
        const yy = dash.length ? y(p.p99) : y(p.rate);
        j ? g.lineTo(x(p.t), yy) : g.moveTo(x(p.t), yy);
      });
      g.stroke();
    }
    g.setLineDash([]);
    g.fillStyle = color;
    g.fillText(model, pad + 5 + (i - 1) * 70, h - 10);
  }
}

function renderWorkers(workers) {
  $("#workers tbody").replaceChildren(
    ...workers.map((w) => row([w.name, w.transport, el("span", w.state, w.state === "online" ? "ok" : "bad"), w.workers || "", w.queue_depth, (w.models || []).join(", ")]))
  );
}

function renderAnomalies(list) {
  $("#anomalies").replaceChildren(
    ...list.map((a) => {
      const p = a.point || {};
      return el("li", `${age(a.at)}: ${a.device} ${a.sensor || p.sensor || ""} = ${p.value} (${p.method || ""}${p.kind ? " " + p.kind : ""}, score ${fixed(p.score, 2)})`);
    })
  );
}

// renderLatest draws each model's latest request and result in its panel.
function renderLatest() {
  const root = $("#latest");
  for (const [model, l] of [...latest].sort()) {
    let panel = root.querySelector(`section[data-model="${CSS.escape(model)}"]`);
    if (!panel) {
      panel = el("section", null, "model");
      panel.dataset.model = model;
      panel.append(el("h3", model), el("p", "", "muted meta"), el("div", null, "view"), el("pre", "", "summary"));
      root.append(panel);
    }
    if (panel.dataset.seq === String(l.seq)) continue;
    panel.dataset.seq = String(l.seq);
    const res = l.result && l.result.result;
    panel.querySelector(".meta").textContent = `${l.device} · ${l.id} · ${age(l.at)}` + (l.result ? ` · ${l.result.status} in ${fixed(l.result.latency_ms, 1)} ms` : " · streaming");
    const view = panel.querySelector(".view");
    view.replaceChildren();
    const input = l.input || {};
    const out = res && res.output;
    try {
      switch (model) {
        case "detect": drawImage(view, input.image, out, drawBoxes); break;
        case "ocr": drawImage(view, input.image, out, drawText); break;
        case "vad": drawWave(view, input, out); break;
        case "anomaly": drawSeries(view, l.device); break;
        case "chat": view.append(el("div", chatText(l, out), "answer")); break;
      }
    } catch (e) {
      view.append(el("p", "cannot draw this input: " + e.message, "muted"));
    }
    panel.querySelector(".summary").textContent = res ? summary(model, res) : "";
  }
}

function canvasIn(view, w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  view.append(c);
  return c.getContext("2d");
}

// drawImage draws a base64 image with what the model found on it.
function drawImage(view, b64, out, overlay) {
  if (!b64) {
    view.append(el("p", "(input image not kept: too large)", "muted"));
    return;
  }
  const img = new Image();
  img.onload = () => {
    const g = canvasIn(view, img.naturalWidth, img.naturalHeight);
    g.drawImage(img, 0, 0);
    if (out) overlay(g, out, img.naturalWidth, img.naturalHeight);
  };
  img.src = (b64.startsWith("iVBOR") ? "data:image/png;base64," : "data:image/jpeg;base64,") + b64;
}

function drawBoxes(g, out, w, h) {
  const sx = out.width ? w / out.width : 1, sy = out.height ? h / out.height : 1;
  g.lineWidth = Math.max(2, w / 300);
  g.font = `${Math.max(12, Math.round(w / 40))}px sans-serif`;
  (out.detections || []).forEach((d, i) => {
    const b = d.box, color = palette[i % palette.length];
    g.strokeStyle = color;
    g.strokeRect(b.x1 * sx, b.y1 * sy, (b.x2 - b.x1) * sx, (b.y2 - b.y1) * sy);
    const label = `${d.label} ${fixed(d.score, 2)}`;
    g.fillStyle = color;
    g.fillRect(b.x1 * sx, b.y1 * sy - parseInt(g.font), g.measureText(label).width + 6, parseInt(g.font));
    g.fillStyle = "#fff";
    g.fillText(label, b.x1 * sx + 3, b.y1 * sy - 3);
  });
}

function drawText(g, out, w, h) {
  const sx = out.width ? w / out.width : 1, sy = out.height ? h / out.height : 1;
  for (const line of out.lines || []) {
    const p = line.box || [];
    if (p.length !== 4) continue;
    g.fillStyle = "rgba(255,255,255,0.75)";
    g.strokeStyle = "#dc2626";
    g.beginPath();
    p.forEach(([x, y], i) => (i ? g.lineTo(x * sx, y * sy) : g.moveTo(x * sx, y * sy)));
    g.closePath();
    g.fill();
    g.stroke();
    const top = Math.min(...p.map((q) => q[1])) * sy, bottom = Math.max(...p.map((q) => q[1])) * sy;
    g.fillStyle = "#111";
    g.font = `${Math.max(10, Math.round((bottom - top) * 0.8))}px sans-serif`;
    g.fillText(line.text, Math.min(...p.map((q) => q[0])) * sx + 2, bottom - (bottom - top) * 0.15);
  }
}

// drawWave draws the request's audio and shades the speech segments.
function drawWave(view, input, out) {
  let samples = input.samples;
  if (!samples && input.pcm16) {
    const bin = atob(input.pcm16);
    const dv = new DataView(new ArrayBuffer(bin.length));
    for (let i = 0; i < bin.length; i++) dv.setUint8(i, bin.charCodeAt(i));
    samples = [];
    for (let i = 0; i + 1 < bin.length; i += 2) samples.push(dv.getInt16(i, true) / 32768);
  }
  if (!samples) {
    view.append(el("p", "(input audio not kept: too large)", "muted"));
    return;
  }
  const w = 600, h = 120;
  const g = canvasIn(view, w, h);
  const durMS = (samples.length / 16000) * 1000;
  const start = out && out.frames_start_ms !== undefined ? out.frames_start_ms : 0;
  g.fillStyle = "rgba(22,163,74,0.45)";
  for (const s of (out && out.segments) || []) {
    const a = Math.max(0, s.start_ms - start), b = Math.min(durMS, (s.open ? start + durMS : s.end_ms) - start);
    if (b > a) g.fillRect((a / durMS) * w, 0, ((b - a) / durMS) * w, h);
  }
  g.strokeStyle = "#93c5fd";
  g.beginPath();
  const step = Math.max(1, Math.floor(samples.length / w));
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) { lo = Math.min(lo, samples[i]); hi = Math.max(hi, samples[i]); }
    g.moveTo(x, h / 2 - hi * (h / 2));
    g.lineTo(x, h / 2 - lo * (h / 2));
  }
  g.stroke();
}

// drawSeries draws the latest anomaly device's recent values, flagged points in red.
async function drawSeries(view, device) {
  const headers = {};
  if (authHeader()) headers.Authorization = authHeader();
  const resp = await fetch(`fleet/devices/${encodeURIComponent(device)}/results`, { headers, cache: "no-store" });
  if (!resp.ok) return;
  const body = await resp.json();
  const pts = [];
  for (const r of (body.results || []).slice().reverse()) {
    const res = r.result;
    if (r.model !== "anomaly" || !res) continue;
    const outs = res.output ? [res.output] : (res.outputs || []).map((o) => o.output);
    for (const o of outs) {
      if (!o) continue;
      for (const p of o.results || [o]) if (typeof p.value === "number") pts.push(p);
    }
  }
  const w = 600, h = 160;
  const g = canvasIn(view, w, h);
  g.fillStyle = "#111";
  g.fillRect(0, 0, w, h);
  if (!pts.length) return;
  const lo = Math.min(...pts.map((p) => p.value)), hi = Math.max(...pts.map((p) => p.value));
  const x = (i) => 10 + (i / Math.max(1, pts.length - 1)) * (w - 20);
  const y = (v) => h - 10 - ((v - lo) / (hi - lo || 1)) * (h - 20);
  g.strokeStyle = "#93c5fd";
  g.beginPath();
  pts.forEach((p, i) => (i ? g.lineTo(x(i), y(p.value)) : g.moveTo(x(i), y(p.value))));
  g.stroke();
  pts.forEach((p, i) => {
    g.fillStyle = p.is_anomaly ? "#ef4444" : p.warming_up ? "#6b7280" : "#93c5fd";
    g.beginPath();
    g.arc(x(i), y(p.value), p.is_anomaly ? 5 : 2.5, 0, 2 * Math.PI);
    g.fill();
  });
}

// chatText is the answer so far: the stream's deltas, or the final output.
function chatText(l, out) {
  if (out && out.text) return out.text;
  let text = "";
  for (const ev of l.stream || []) if (ev.delta && ev.delta.text) text += ev.delta.text;
  return text;
}

connect();
