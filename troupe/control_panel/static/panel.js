// troupe's control panel: one page, views by tab, every list a page of /api/* (?limit=&offset=), charts
// from /api/series drawn with the vendored uPlot, and the whole updated live from /api/events (SSE).
"use strict";
const PAGE = 20;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const when = (stamp) => stamp ? new Date(stamp).toLocaleString() : "";
const clock = (stamp) => stamp ? new Date(stamp).toLocaleTimeString() : "";
const money = (n) => "$" + Number(n || 0).toFixed(4);
const q = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)).toString();
const COLOURS = ["#7aa2f7", "#3ecf8e", "#f5a524", "#f25f5c", "#bb9af7", "#2ac3de", "#e0af68", "#9ece6a"];
const GROUPS = ["conversation", "life", "process", "pool", "audit"];
let me = {role: "operator", may: {}};
let personas = [];
const offsets = {};  // each list's page offset
let groupsOn = new Set(["conversation", "life", "process", "audit"]);  // pool churn off by default

// ---------------------------------------------------------------- signing in, and the two fetch helpers
// The page signs in once (POST /api/login sets an HttpOnly, SameSite=Strict cookie); the key itself is
// never stored by the page. The banner's URL carries the key in its #fragment, which no server sees.
async function signIn(key) {
  const response = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({key})});
  if (!response.ok) { $("loginerror").textContent = "That key cannot sign in here."; return false; }
  $("keybox").style.display = "none"; $("loginerror").textContent = "";
  return true;
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, credentials: "same-origin"});
  if (response.status === 401) { $("keybox").style.display = "block"; throw new Error("unauthorised"); }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function send(path, options = {}) {
  // like api(), but the answer's status is the caller's to judge (a 404 is an answer here, not a failure)
  const response = await fetch(path, {...options, credentials: "same-origin"});
  if (response.status === 401) $("keybox").style.display = "block";
  return {ok: response.ok, status: response.status, body: await response.json().catch(() => ({}))};
}

// ---------------------------------------------------------------- pages
function pager(name, page, reload) {
  const box = document.querySelector(`[data-pager="${name}"]`);
  const total = document.querySelector(`[data-total="${name}"]`);
  if (total) { total.textContent = `${page.total} in all`; total.dataset.value = page.total; }
  if (!box) return;
  const first = page.total ? page.offset + 1 : 0, last = page.offset + page.items.length;
  box.innerHTML = `<span>${first}–${last} of ${page.total}</span><button data-move="-1" ${page.offset ? "" : "disabled"}>‹ newer</button><button data-move="1" ${page.has_more ? "" : "disabled"}>older ›</button>`;
  box.querySelectorAll("button").forEach((b) => b.onclick = () => {
    offsets[name] = Math.max(0, (offsets[name] || 0) + Number(b.dataset.move) * PAGE); reload();
  });
}
const rowsOr = (rows, columns, none) => rows.join("") || `<tr><td colspan="${columns}" class="empty">${none}</td></tr>`;

// ---------------------------------------------------------------- overview: personas, charts, feed
async function overview() {
  const [status, all] = await Promise.all([api("/api/status"), api("/api/personas")]);
  $("summary").textContent = `up ${status.uptime} · ${status.process_count} live processes · ${status.session_count} live sessions`;
  const executives = all.filter((p) => p.kind === "executive");
  const memories = await Promise.all(executives.map((p) => api(`/api/personas/${encodeURIComponent(p.name)}/memory?limit=3`).catch(() => null)));
  $("personas").innerHTML = executives.map((p, i) => {
    const share = p.budget_usd ? Math.min(100, 100 * p.spent_usd / p.budget_usd) : 0;
    const m = memories[i];
    const layers = m ? Object.entries(m.stats).map(([layer, n]) => `<span data-layer="${esc(layer)}">${esc(layer)} ${n.live}</span>`).join(" · ") : "";
    const recent = m ? m.recent.items.map((x) => `<li title="${esc(x.content)}"><span class="tag">${esc(x.layer)}</span>${x.superseded_by ? `<s>${esc(x.content)}</s>` : esc(x.content)}</li>`).join("") : "";
    return `<div class="persona" data-persona="${esc(p.name)}"><b>${esc(p.name)}</b> <span class="status ${p.active ? "running" : "pending"}">${p.active ? "live" : "idle"}</span>
      <div class="role">${esc(p.role)}</div>
      <div class="bar ${share >= 100 ? "over" : ""}"><span style="width:${share}%"></span></div>
      <div class="role">${money(p.spent_usd)} of $${p.budget_usd.toFixed(2)}</div>
      <div class="counts"><span data-count="sessions">${p.live_sessions}</span> live sessions</div>
      <div class="memory">memory: ${layers}<ul>${recent}</ul></div></div>`;
  }).join("");
  await charts();
}

const plots = {};
window.troupeCharts = plots;  // for the browser test: each chart's drawn data
function plot(name, xs, series, total, legend = true) {
  const box = document.querySelector(`[data-chart="${name}"]`);
  const el = box.querySelector(".plot");
  const t = box.querySelector(".total");
  t.textContent = total.text; t.dataset.value = total.value;
  const data = [xs, ...series.map((s) => s.values)];
  const opts = {
    width: Math.max(200, el.clientWidth), height: legend ? 150 : 175, legend: {show: legend, live: false},
    axes: [{stroke: "#8a93a6", grid: {stroke: "#262b36"}}, {stroke: "#8a93a6", grid: {stroke: "#262b36"}, size: 50}],
    series: [{}, ...series.map((s, i) => ({label: s.label, stroke: s.colour || COLOURS[i % COLOURS.length], width: 1.5,
                                          dash: s.dash, spanGaps: false}))],
  };
  if (plots[name]) plots[name].destroy();
  el.innerHTML = "";
  plots[name] = new uPlot(opts, data, el);
  plots[name].troupe = {series: series.map((s) => ({label: s.label, values: s.values})), total: total.value};
}

const sum = (values) => values.reduce((a, b) => a + (b || 0), 0);
async function charts() {
  const window_ = $("window").value;
  const s = await api(`/api/series?window=${window_}`);
  const xs = s.points.map((p) => Date.parse(p.t) / 1000);
  const perMinute = s.step_s / 60;
  const names = s.personas;
  const byPersona = (field) => names.map((n, i) => ({label: n, colour: COLOURS[i % COLOURS.length], values: s.points.map((p) => p[field][n] ?? null)}));
  const ttft = [
    ...names.map((n, i) => ({label: `${n} p50`, colour: COLOURS[i % COLOURS.length], values: s.points.map((p) => p.ttft_p50_ms[n] ?? null)})),
    ...names.map((n, i) => ({label: `${n} p95`, colour: COLOURS[i % COLOURS.length], dash: [4, 4], values: s.points.map((p) => p.ttft_p95_ms[n] ?? null)})),
  ];
  const p50s = Object.entries(s.totals.ttft_p50_ms).filter(([, v]) => v != null).sort((a, b) => b[1] - a[1]);
  const slowest = p50s.length ? `slowest p50 ${esc(p50s[0][0])} ${Math.round(p50s[0][1])} ms · p95 dashed` : "no turns";
  plot("ttft", xs, ttft, {text: slowest, value: JSON.stringify(s.totals.ttft_p50_ms)}, false);
  $("persona-key").innerHTML = names.map((n, i) => `<span style="color:${COLOURS[i % COLOURS.length]}">■</span> ${esc(n)}`).join(" &nbsp;");
  plot("turns", xs, [{label: "turns/min", values: s.points.map((p) => p.turns / perMinute)}],
       {text: `${s.totals.turns} turns`, value: s.totals.turns});
  const codes = Object.keys(s.totals.errors).sort();
  const errors = sum(Object.values(s.totals.errors));
  plot("errors", xs, codes.length ? codes.map((c, i) => ({label: c, colour: COLOURS[(i + 3) % COLOURS.length], values: s.points.map((p) => p.errors[c] || 0)}))
                                  : [{label: "errors", values: s.points.map(() => 0)}],
       {text: `${errors} errors`, value: errors});
  const cost = sum(Object.values(s.totals.cost_usd));
  plot("cost", xs, byPersona("cost_usd"), {text: `${money(cost)} · ${sum(Object.values(s.totals.tokens))} tokens`, value: cost.toFixed(6)}, false);
  $("budgets").innerHTML = names.map((n) => {
    const budget = s.budgets[n] || 0, spent = s.spent_usd[n] || 0, share = budget ? Math.min(100, 100 * spent / budget) : 0;
    return `<div data-budget="${esc(n)}"><span>${esc(n)}</span><div class="bar ${share >= 100 ? "over" : ""}"><span style="width:${share}%"></span></div><span>${money(spent)} of $${budget.toFixed(2)}</span></div>`;
  }).join("");
  const lastOf = (field) => { for (let i = s.points.length - 1; i >= 0; i--) if (s.points[i][field] != null) return s.points[i][field]; return null; };
  plot("sessions", xs, [{label: "live sessions", values: s.points.map((p) => p.sessions)}, {label: "free pool", values: s.points.map((p) => p.pool)}],
       {text: `${lastOf("sessions") ?? "–"} live · ${lastOf("pool") ?? "–"} free`, value: lastOf("sessions") ?? ""});
  const restarts = sum(s.points.map((p) => p.restarts));
  plot("restarts", xs, [{label: "restarts", values: s.points.map((p) => p.restarts)}], {text: `${restarts} restarts`, value: restarts});
}

function eventLine(item) {
  const detail = [item.agent, item.kind, item.caller_id, item.activity, item.process, item.actor, item.subject, item.error || item.reason]
    .filter(Boolean).map(esc).join(" · ");
  return `<li class="${item.level === "error" ? "error" : ""}" data-group="${esc(item.group)}"><time>${clock(item.at)}</time><b>${esc(item.type)}</b> ${detail}</li>`;
}
function feed(item) {
  if (item.group === "pool") return;  // warm actors coming and going: counted in Events, not shown here
  $("feed").insertAdjacentHTML("afterbegin", eventLine(item));
  while ($("feed").children.length > 100) $("feed").lastChild.remove();
}

// ---------------------------------------------------------------- conversations
async function conversationsView() {
  const live = await api(`/api/sessions?${q({limit: PAGE, offset: offsets.sessions || 0})}`);
  $("sessions").tBodies[0].innerHTML = rowsOr(live.items.map((s) => `<tr class="pick" data-session="${esc(s.session_id)}"><td>${esc(s.caller_id)}</td><td>${esc(s.agent)}</td><td>${esc(s.process_id)}</td>
    <td><span class="status ${esc(s.status)}">${esc(s.status)}</span></td><td>${clock(s.last_active_at)}</td><td><button data-end="${esc(s.session_id)}">End</button></td></tr>`), 6, "no live sessions");
  pager("sessions", live, conversationsView);
  const f = $("conversation-filters");
  const page = await api(`/api/conversations?${q({persona: f.persona.value, status: f.status.value, caller: f.caller.value.trim(), limit: PAGE, offset: offsets.conversations || 0})}`);
  $("conversations").tBodies[0].innerHTML = rowsOr(page.items.map((c) => `<tr class="pick" data-session="${esc(c.session_id)}"><td>${esc(c.caller)}</td><td>${esc(c.persona)}</td>
    <td><span class="status ${esc(c.status)}">${esc(c.status)}</span></td><td>${c.turns}</td><td>${when(c.last_active_at)}</td></tr>`), 5, "no conversations match");
  pager("conversations", page, conversationsView);
  if (shownConversation) await showConversation(shownConversation, true);
}

let shownConversation = null;
const revealed = new Map();  // numbers revealed in this page's life (each reveal audited), never stored
async function showConversation(id, quiet = false) {
  const answer = await send(`/api/conversations/${encodeURIComponent(id)}`);
  if (!answer.ok) { if (!quiet) $("conversation").innerHTML = `<p class="empty">${esc(answer.body.error?.message || "not found")}</p>`; return; }
  shownConversation = id;
  const c = answer.body;
  const turns = c.turns.map((t, i) => {
    const figures = [t.ttft_ms != null ? `first token ${t.ttft_ms} ms` : null, t.duration_ms != null ? `${t.duration_ms} ms in all` : null,
                     t.input_tokens != null ? `${t.input_tokens} in / ${t.output_tokens} out tokens` : null,
                     t.tool_calls ? `${t.tool_calls} tool calls` : null, t.cost_usd != null ? money(t.cost_usd) : null].filter(Boolean).join(" · ");
    const messages = t.messages.map((m) => {
      if (m.role === "tool") return `<div class="msg tool"><span class="who">tool ${esc(m.name || "")}</span>${esc(m.content)}</div>`;
      const calls = m.tool_calls.map((x) => `<div class="msg tool">→ ${esc(x.name)}(${esc(x.arguments)})</div>`).join("");
      return `<div class="msg"><span class="who">${esc(m.role === "assistant" ? c.persona : m.role)}</span>${esc(m.content || "")}${m.interrupted ? '<span class="badge cut">cut off</span>' : ""}</div>${calls}`;
    }).join("");
    return `<div class="turn" data-turn="${i}"><div class="figures">turn ${i + 1} · ${clock(t.at)} · ${figures}${t.interrupted ? '<span class="badge cut">interrupted</span>' : ""}${t.error_code ? `<span class="badge err">${esc(t.error_code)}</span>` : ""}</div>${messages}</div>`;
  }).join("");
  const shown = revealed.get(c.session_id);
  $("conversation").innerHTML = `<div><b id="conversation-caller">${esc(shown || c.caller)}</b> with ${esc(c.persona)} <span class="status ${esc(c.status)}">${esc(c.status)}</span>
    <button id="reveal" ${shown ? "disabled" : ""}>Reveal number</button> ${c.status === "active" ? `<button data-end="${esc(c.session_id)}">End</button>` : ""}</div>
    <div class="from">${when(c.started_at)} · ${c.turns.length} turns · ${c.totals.input_tokens + c.totals.output_tokens} tokens · ${money(c.totals.cost_usd)} · ${c.totals.interrupted} interrupted${c.earlier_messages ? ` · ${c.earlier_messages} earlier messages not shown` : ""}</div>
    ${c.summary ? `<p class="from">${esc(c.summary)}</p>` : ""}${turns || '<p class="empty">no turns kept</p>'}`;
  $("reveal").onclick = () => reveal(c.session_id);
}

async function reveal(id) {
  if (!confirm("Reveal this caller's full number? The reveal is recorded in the audit log under your key's name.")) return;
  const answer = await send(`/api/conversations/${encodeURIComponent(id)}/reveal`, {method: "POST"});
  if (answer.ok) { revealed.set(id, answer.body.caller_id); $("conversation-caller").textContent = answer.body.caller_id; $("reveal").disabled = true; }
}

async function endConversation(id) {
  await send(`/api/conversations/${encodeURIComponent(id)}/end`, {method: "POST"});
  refreshSoon();
}

// ---------------------------------------------------------------- processes
async function processesView() {
  const f = $("process-filters");
  const [page, tree] = await Promise.all([
    api(`/api/processes?${q({kind: f.kind.value, status: f.status.value, agent: f.agent.value, q: f.q.value.trim(), limit: PAGE, offset: offsets.processes || 0})}`),
    api("/api/processes/tree")]);
  $("processes").tBodies[0].innerHTML = rowsOr(page.items.map((p) => `<tr data-id="${esc(p.id)}"><td>${esc(p.id)}</td><td>${esc(p.kind)}</td><td>${esc(p.agent)}</td>
    <td>${p.node ? esc(p.node.name) : "–"}</td><td><span class="status ${esc(p.status)}">${esc(p.status)}</span></td>
    <td class="text" title="${esc(p.task)}${p.error ? " — " + esc(p.error) : ""}">${esc(p.task)}${p.error ? " — " + esc(p.error) : ""}</td><td>${p.metrics.total_tokens}</td><td>${money(p.metrics.estimated_cost)}</td><td>${p.restarts}</td></tr>`), 9, "no processes match");
  pager("processes", page, processesView);
  $("nodes").innerHTML = tree.nodes.map((n) => `<div class="node" data-node="${esc(n.node)}"><b>${esc(n.name)}</b> <span class="dim">${esc(n.node)}</span>
    <table><tbody>${Object.entries(n.kinds).map(([kind, k]) => `<tr data-kind="${esc(kind)}"><td>${esc(kind)}</td><td>${k.count}</td><td>${k.restarts} restarts</td><td class="text">${esc(k.last_error || "")}</td></tr>`).join("")}</tbody></table></div>`).join("")
    || '<p class="empty">no live processes</p>';
  const children = {};
  tree.spawn_tree.forEach((p) => { (children[p.parent_id || ""] ||= []).push(p); });
  const lines = [];
  const walk = (p, depth) => {
    lines.push(`<div style="padding-left:${depth * 16}px" data-id="${esc(p.id)}">${depth ? "↳ " : ""}<span class="status ${esc(p.status)}">${esc(p.status)}</span> ${esc(p.kind)} ${esc(p.agent)} <span class="dim">${esc(p.task)}</span>${p.error ? ` <span class="badge err">${esc(p.error)}</span>` : ""}</div>`);
    (children[p.id] || []).forEach((c) => walk(c, depth + 1));
  };
  (children[""] || []).forEach((p) => walk(p, 0));
  $("spawn").innerHTML = lines.join("") || '<p class="empty">no delegated tasks</p>';
}

// ---------------------------------------------------------------- life: schedules, runs, journal, goals, posts
async function lifeView() {
  const persona = $("life-persona").value;
  if (!persona) return;
  const f = $("run-filters");
  const [schedules, runs, posts, goals, days] = await Promise.all([
    api(`/api/schedules?${q({persona})}`),
    api(`/api/runs?${q({persona, activity: f.activity.value, status: f.status.value, limit: PAGE, offset: offsets.runs || 0})}`),
    api(`/api/posts?${q({persona, limit: PAGE, offset: offsets.posts || 0})}`),
    send(`/api/personas/${encodeURIComponent(persona)}/goals`),
    api(`/api/personas/${encodeURIComponent(persona)}/journal/days`)]);
  $("schedules").tBodies[0].innerHTML = rowsOr(schedules.schedules.map((s) => `<tr data-schedule="${esc(s.id)}"><td>${esc(s.activity)}</td>
    <td><input name="cron" value="${esc(s.cron_expression)}" size="14"></td><td>${when(s.next_trigger_at)}</td><td>${when(s.last_triggered_at)}</td>
    <td><span class="status ${s.is_paused ? "paused" : "running"}" data-state>${s.is_paused ? "paused" : "active"}</span></td>
    <td><button data-pause="${s.is_paused ? "resume" : "pause"}">${s.is_paused ? "Resume" : "Pause"}</button> <button data-retime>Save cron</button></td></tr>`), 6, "no schedules");
  $("runs").tBodies[0].innerHTML = rowsOr(runs.items.map((r) => `<tr><td>${when(r.triggered_at)}</td><td>${esc(r.activity)}</td><td><span class="status ${esc(r.status)}">${esc(r.status)}</span></td><td class="text" title="${esc(r.output_summary)}">${esc(r.output_summary)}</td></tr>`), 4, "no runs");
  pager("runs", runs, lifeView);
  $("posts").tBodies[0].innerHTML = rowsOr(posts.items.map((p) => `<tr><td>${when(p.created_at)}</td><td><span class="status ${esc(p.status)}">${esc(p.status)}</span></td>
    <td>${esc(p.delivered_to.join(", ") || "–")}</td><td>${esc(p.pending.join(", ") || "–")}${p.last_error ? ` <span class="badge err">${esc(p.last_error)}</span>` : ""}</td><td class="text" title="${esc(p.text)}">${esc(p.text)}</td></tr>`), 5, "no posts");
  pager("posts", posts, lifeView);
  $("goals").innerHTML = goals.ok ? goalsHtml(goals.body) : `<p class="empty">${esc(goals.body.error?.message || "no goals")}</p>`;
  const chosen = $("journal-day").value;
  $("journal-day").innerHTML = days.days.map((d) => `<option value="${esc(d.date)}">${esc(d.date)} (${d.entries})</option>`).join("") || "<option value=''>no entries</option>";
  if (chosen && days.days.some((d) => d.date === chosen)) $("journal-day").value = chosen;
  await journal();
}

function goalsHtml(g) {
  // what is at risk first (the life loop's flags: a project past due, a key result behind), then the rest
  const flags = (g.flags || []).map((f) => `<li class="goal risk" data-flag="${esc(f.kind)}"><span class="badge cut">${esc(f.kind.replace("_", " "))}</span> ${esc(f.text)}</li>`).join("");
  const objectives = (g.objectives || []).map((o) => `<li><b>${esc(o.title)}</b><ul>${o.key_results.map((kr) =>
    `<li>${esc(kr.description)} <span class="dim">${esc(kr.current)} of ${esc(kr.target)} ${esc(kr.unit)} · ${Math.round(100 * kr.progress)}%</span></li>`).join("")}</ul></li>`).join("");
  const projects = (g.projects || []).map((p) => `<li>${esc(p.name)} <span class="status ${esc(p.status)}">${esc(p.status)}</span> <span class="dim">${esc(p.priority || "")}${p.due ? " · due " + esc(p.due) : ""}</span></li>`).join("");
  return `<p class="dim">${esc(g.quarter || "")} · ${esc(g.mission || "")}</p>
    <h3 class="dim">At risk</h3><ul id="at-risk">${flags || '<li class="empty">nothing at risk</li>'}</ul>
    <h3 class="dim">Objectives</h3><ul>${objectives}</ul><h3 class="dim">Projects</h3><ul>${projects}</ul>`;
}

async function journal() {
  const persona = $("life-persona").value, day = $("journal-day").value;
  if (!persona || !day) { $("journal").innerHTML = '<p class="empty">no journal yet</p>'; return; }
  const j = await api(`/api/personas/${encodeURIComponent(persona)}/journal?${q({date: day})}`);
  $("journal").innerHTML = j.entries.map((e) => `<div><span class="dim">${clock(e.created_at)}</span> ${esc(e.text)}</div>`).join("") || '<p class="empty">nothing that day</p>';
}

async function changeSchedule(id, change) {
  const answer = await send(`/api/schedules/${encodeURIComponent(id)}`, {method: "PATCH", headers: {"Content-Type": "application/json"}, body: JSON.stringify(change)});
  if (!answer.ok) alert(answer.body.error?.message || "could not change the schedule");
  await lifeView();
}

// ---------------------------------------------------------------- memory: a caller's, a persona's
let lookedUp = null;
const SHOWN = 20;
function listOf(items, line, none) {
  if (!items.length) return `<p class="empty">${none}</p>`;
  const more = items.length > SHOWN ? `<li class="from">and ${items.length - SHOWN} more</li>` : "";
  return `<ul>${items.slice(0, SHOWN).map(line).join("")}${more}</ul>`;
}
function from(m) { return `<span class="from"> — ${esc(m.persona)} · ${esc(m.source || "no source")}${m.channel ? " · " + esc(m.channel) : ""} · ${when(m.created_at)}</span>`; }

function renderCaller(known) {
  const c = known.counts;
  $("callerview").innerHTML = `<b>${esc(known.caller)}</b>
    <div class="from">${known.last_spoke_with ? "last spoke with " + esc(known.last_spoke_with) + " · " : ""}${known.first_seen_at ? "first seen " + when(known.first_seen_at) : ""}</div>
    <div class="from">profile ${c.profile.live} (+${c.profile.superseded} corrected) · episodes ${c.episode.live} · knowledge ${c.knowledge.live} · core blocks ${c.core_blocks}</div>
    <h3>Profile facts</h3>${listOf(known.profile.live, (m) => `<li>${esc(m.content)}${from(m)}</li>`, "none")}
    <h3>Corrected</h3>${listOf(known.profile.history, (m) => `<li><s>${esc(m.content)}</s> → ${esc(m.replaced_by.content ?? "#" + m.replaced_by.id)}${from(m)}<span class="from"> · replaced ${when(m.superseded_at)}</span></li>`, "none")}
    <h3>Episodes</h3>${listOf(known.episodes, (m) => `<li><span class="from">${when(m.created_at)} · ${esc(m.channel || "?")} · ${esc(m.persona)}:</span> ${esc(m.content)}</li>`, "none")}
    ${known.knowledge.length ? `<h3>Other</h3>${listOf(known.knowledge, (m) => `<li>${esc(m.content)}${from(m)}</li>`, "none")}` : ""}
    <h3>Core blocks</h3>${listOf(known.core_blocks, (b) => `<li><span class="from">${esc(b.persona)}:</span> ${esc(b.content)}</li>`, "none")}
    <button id="forget" class="danger">Forget this person</button> <span id="forgotten"></span>`;
  $("forget").onclick = () => forget(known.caller);
}

async function lookUp(event) {
  event.preventDefault();
  const typed = $("caller").value.trim();
  if (!typed) return;
  const answer = await send(`/api/callers/${encodeURIComponent(typed)}/memory`);
  if (answer.ok) { lookedUp = typed; $("caller").value = ""; renderCaller(answer.body); }
  else $("callerview").innerHTML = `<p class="empty">${esc(answer.body.error?.message || "lookup failed")}</p>`;
}

async function forget(masked) {
  if (!lookedUp || !confirm(`Forget ${masked}? Their sessions, transcripts, memories and core blocks are deleted for every persona. This cannot be undone.`)) return;
  const answer = await send(`/api/callers/${encodeURIComponent(lookedUp)}`, {method: "DELETE"});
  if (!answer.ok) { $("forgotten").textContent = answer.body.error?.message || "failed"; return; }
  lookedUp = null;
  const counts = Object.entries(answer.body.deleted).map(([k, n]) => `${n} ${k.replace("_", " ")}`).join(", ");
  $("callerview").innerHTML = `<p id="forgotten">Forgot ${esc(answer.body.caller)}: ${esc(counts)}.</p>`;
}

async function memoryView() {
  const persona = $("memory-persona").value;
  if (!persona) return;
  const m = await api(`/api/personas/${encodeURIComponent(persona)}/memory?${q({limit: PAGE, offset: offsets.memory || 0})}`);
  $("personamemory").innerHTML = `<div class="from">${Object.entries(m.stats).map(([l, n]) => `${esc(l)} ${n.live} live, ${n.superseded} superseded`).join(" · ")}</div>
    <h3 class="dim">Core block</h3><p class="journal">${esc(m.core_block.persona || "empty")}</p>
    <ul>${m.recent.items.map((x) => `<li><span class="tag">${esc(x.layer)}</span>${x.superseded_by ? `<s>${esc(x.content)}</s>` : esc(x.content)} <span class="from">${esc(x.subject)} · ${when(x.created_at)}</span></li>`).join("")}</ul>`;
  pager("memory", {...m.recent, offset: offsets.memory || 0}, memoryView);
}

// ---------------------------------------------------------------- events and audit
async function eventsView() {
  const [page, ...counts] = await Promise.all([
    api(`/api/events/log?${q({persona: $("event-persona").value, limit: 50, offset: offsets.events || 0})}&${[...groupsOn].map((g) => "group=" + g).join("&")}`),
    ...GROUPS.map((g) => api(`/api/events/log?${q({group: g, persona: $("event-persona").value, limit: 1})}`))]);
  $("groups").innerHTML = GROUPS.map((g, i) => `<span class="chip ${groupsOn.has(g) ? "on" : ""}" data-group="${g}">${g}<span class="n">${counts[i].total}</span></span>`).join("");
  $("eventlog").innerHTML = page.items.map(eventLine).join("") || '<li class="empty">no events in these groups</li>';
  pager("events", {...page, items: page.items}, eventsView);
}

async function auditView() {
  const page = await api(`/api/audit?${q({limit: PAGE, offset: offsets.audit || 0})}`);
  $("audit").tBodies[0].innerHTML = rowsOr(page.items.map((a) => `<tr><td>${when(a.at)}</td><td>${esc(a.actor)}</td><td>${esc(a.role)}</td><td>${esc(a.action)}</td><td>${esc(a.subject)}</td><td class="text">${esc(a.detail)}</td></tr>`), 6, "nothing audited yet");
  pager("audit", page, auditView);
}

// ---------------------------------------------------------------- views, refresh, live
const VIEWS = {overview, conversations: conversationsView, processes: processesView, life: lifeView, memory: memoryView, events: eventsView, audit: auditView};
let view = "overview";
function show(name) {
  view = VIEWS[name] ? name : "overview";
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("on", v.id === `view-${view}`));
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("on", a.dataset.view === view));
  refresh();
}
let running = null, again = false;
async function refresh() {
  if (running) { again = true; return; }
  running = VIEWS[view]().catch(() => {}).finally(() => { running = null; if (again) { again = false; refreshSoon(); } });
}
let pending = null;
// at most one refresh of the view a second and a half, however busy the company is
function refreshSoon() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 1500); }

// Server-sent events read with fetch (the session cookie travels with it).
async function listen() {
  let last = 0;
  for (;;) {
    try {
      const response = await fetch(`/api/events?masked=true&since=${last}`, {credentials: "same-origin"});
      if (response.status === 401) { $("keybox").style.display = "block"; return; }
      $("live").className = "on"; $("live").textContent = "live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (!data) continue;
          const item = JSON.parse(data);
          last = item.seq; feed(item);
          if (view !== "events" || groupsOn.has(item.group)) refreshSoon();
        }
      }
    } catch (e) { /* reconnect below */ }
    $("live").className = ""; $("live").textContent = "reconnecting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function start() {
  me = await api("/api/me");
  $("whoami").textContent = `${me.name} · ${me.role}`;
  if (!me.may.audit) document.querySelector('#tabs a[data-view="audit"]').remove();  // the audit log is for admins
  const all = await api("/api/personas");
  personas = all;
  const executives = all.filter((p) => p.kind === "executive").map((p) => p.name);
  document.querySelectorAll("[data-personas]").forEach((s) => s.innerHTML = `<option value="">any persona</option>` + all.map((p) => `<option>${esc(p.name)}</option>`).join(""));
  document.querySelectorAll("[data-executives]").forEach((s) => s.innerHTML = executives.map((n) => `<option>${esc(n)}</option>`).join(""));
  const schedules = await api("/api/schedules").catch(() => ({schedules: []}));
  const activities = [...new Set(schedules.schedules.map((s) => s.activity))];
  document.querySelectorAll("[data-activities]").forEach((s) => s.innerHTML = `<option value="">any activity</option>` + activities.map((a) => `<option>${esc(a)}</option>`).join(""));
  $("run-activity").innerHTML = activities.map((a) => `<option>${esc(a)}</option>`).join("");
  show(location.hash.slice(1) || "overview");
  listen();
  setInterval(refresh, 15000);  // the charts' clock moves even when nothing happens
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("button, tr.pick, .chip");
  if (!target) return;
  if (target.dataset.end) { event.stopPropagation(); endConversation(target.dataset.end); return; }
  if (target.matches("tr.pick")) { showConversation(target.dataset.session); return; }
  if (target.matches(".chip")) {
    const g = target.dataset.group;
    groupsOn.has(g) ? groupsOn.delete(g) : groupsOn.add(g);
    offsets.events = 0; eventsView(); return;
  }
  const row = target.closest("tr[data-schedule]");
  if (row && target.dataset.pause) changeSchedule(row.dataset.schedule, {is_paused: target.dataset.pause === "pause"});
  else if (row && target.matches("[data-retime]")) changeSchedule(row.dataset.schedule, {cron_expression: row.querySelector("input[name=cron]").value});
});
for (const [form, name, reload] of [["conversation-filters", "conversations", conversationsView], ["process-filters", "processes", processesView], ["run-filters", "runs", lifeView]]) {
  $(form).addEventListener("submit", (event) => { event.preventDefault(); offsets[name] = 0; reload(); });
}
$("window").onchange = charts;
$("life-persona").onchange = () => { offsets.runs = offsets.posts = 0; lifeView(); };
$("memory-persona").onchange = () => { offsets.memory = 0; memoryView(); };
$("journal-day").onchange = journal;
$("event-persona").onchange = () => { offsets.events = 0; eventsView(); };
$("run-now").onclick = async () => {
  await send(`/internal/life/trigger?${q({activity: $("run-activity").value, persona: $("life-persona").value})}`, {method: "POST"});
  refreshSoon();
};
$("caller-box").onsubmit = lookUp;
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
$("savekey").onclick = async () => { if (await signIn($("key").value)) { $("key").value = ""; start(); } };
(async () => {
  const given = new URLSearchParams(location.hash.slice(1)).get("key");
  if (given) { history.replaceState(null, "", location.pathname); await signIn(given); }
  start().catch(() => {});
})();
