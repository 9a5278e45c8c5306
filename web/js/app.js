// The chat page: knowledge bases, uploads with live ingestion progress, documents, and a chat
// whose answers stream in and cite their sources.

import * as api from "./api.js";
import { claimFor, citedSpan } from "./cite.js";
import { apply, lang, setLang, t } from "./i18n.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const HISTORY_TURNS = 6;

const state = {
  kbs: [],
  kb: localStorage.getItem("rag.kb") || "",
  docs: [],
  uploads: [], // {id, name, size, progress, status, error}
  messages: [],
  running: null, // the AbortController of the answer being written
  settings: loadSettings(),
};

// ---------------------------------------------------------------- helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, className, onClick, aria) {
  const b = el("button", className, label);
  b.type = "button";
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", onClick);
  return b;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function notify(message, kind = "error") {
  const box = $("alerts");
  const note = el("div", `alert ${kind}`);
  note.append(el("span", "", message), button("×", "icon-btn", () => note.remove(), t("close")));
  box.append(note);
  while (box.children.length > 3) box.firstChild.remove();
  if (kind !== "error") setTimeout(() => note.remove(), 4000);
}

function explain(exc) {
  if (exc instanceof api.ApiError) {
    if (exc.type === "NetworkError") return t("netError", { detail: exc.message });
    return exc.message;
  }
  return String(exc?.message ?? exc);
}

/** Show an error the user can act on; a missing or wrong key opens the key dialog. */
function fail(exc) {
  if (exc instanceof api.ApiError && exc.status === 401) {
    notify(api.apiKey() ? t("keyRejected") : t("keyNeeded"));
    openKeyDialog();
    return;
  }
  notify(explain(exc));
}

// ---------------------------------------------------------------- settings and key

function loadSettings() {
  try {
    return { mode: "", top_k: "", min_score: "", ...JSON.parse(localStorage.getItem("rag.settings") || "{}") };
  } catch {
    return { mode: "", top_k: "", min_score: "" };
  }
}

function bindSettings() {
  const fields = { mode: $("set-mode"), top_k: $("set-topk"), min_score: $("set-minscore") };
  for (const [name, input] of Object.entries(fields)) {
    input.value = state.settings[name] ?? "";
    input.addEventListener("change", () => {
      state.settings[name] = input.value;
      localStorage.setItem("rag.settings", JSON.stringify(state.settings));
    });
  }
  const drawer = $("settings");
  const toggle = (open) => {
    drawer.hidden = !open;
    $("settings-open").setAttribute("aria-expanded", String(open));
    if (open) $("set-mode").focus();
  };
  $("settings-open").addEventListener("click", () => toggle(drawer.hidden));
  $("settings-close").addEventListener("click", () => toggle(false));
  document.addEventListener("keydown", (e) => e.key === "Escape" && !drawer.hidden && toggle(false));
}

function retrievalParams() {
  const s = state.settings;
  const body = {};
  if (s.mode) body.mode = s.mode;
  if (s.top_k !== "" && Number(s.top_k) >= 1) body.top_k = Math.min(100, Math.round(Number(s.top_k)));
  if (s.min_score !== "" && !Number.isNaN(Number(s.min_score))) body.min_score = Number(s.min_score);
  return body;
}

function openKeyDialog() {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-input").value = api.apiKey();
  dialog.showModal();
}

function bindKeyDialog() {
  $("key-open").addEventListener("click", openKeyDialog);
  $("key-dialog").addEventListener("close", async () => {
    if ($("key-dialog").returnValue !== "ok") return;
    const key = $("key-input").value.trim();
    api.setApiKey(key);
    for (const old of document.querySelectorAll(".alert.error")) old.remove();
    notify(key ? t("keySaved") : t("keyCleared"), "info");
    await loadKbs();
  });
}

// ---------------------------------------------------------------- knowledge bases

async function loadKbs() {
  try {
    state.kbs = await api.listKbs();
  } catch (exc) {
    fail(exc);
    return;
  }
  if (!state.kbs.some((kb) => kb.name === state.kb)) state.kb = state.kbs[0]?.name ?? "";
  renderKbs();
  await Promise.all([loadDocs(), Promise.resolve(loadConversation())]);
}

function renderKbs() {
  const select = $("kb-select");
  select.replaceChildren(...state.kbs.map((kb) => {
    const option = el("option", "", kb.name);
    option.value = kb.name;
    return option;
  }));
  select.value = state.kb;
  select.disabled = !state.kbs.length;
  localStorage.setItem("rag.kb", state.kb);
  const kb = state.kbs.find((k) => k.name === state.kb);
  $("kb-info").textContent = kb
    ? t("kbInfo", { docs: kb.document_count, chunks: kb.chunk_count, store: storeLabel(kb.store_url) })
    : t("noKb");
  $("kb-info").title = kb ? `${kb.description ? `${kb.description}\n` : ""}${kb.store_url}` : "";
}

/** "faiss · hnsw" for "faiss:///data/stores/kb?index=hnsw": the engine, not the path. */
function storeLabel(url) {
  const scheme = url.split(":")[0];
  const index = url.match(/[?&]index=([^&]+)/);
  return index ? `${scheme} · ${decodeURIComponent(index[1])}` : scheme;
}

async function refreshKbInfo() {
  try {
    state.kbs = await api.listKbs();
    renderKbs();
  } catch (exc) {
    fail(exc);
  }
}

function bindKbs() {
  $("kb-select").addEventListener("change", async (e) => {
    state.kb = e.target.value;
    state.uploads = state.uploads.filter((u) => u.status === "uploading");
    renderKbs();
    loadConversation();
    await loadDocs();
  });
  $("kb-new").addEventListener("click", () => {
    $("kb-form").reset();
    $("kb-dialog").showModal();
  });
  $("kb-dialog").addEventListener("close", async () => {
    if ($("kb-dialog").returnValue !== "ok") return;
    const body = { name: $("kb-name").value.trim(), description: $("kb-desc").value.trim() };
    if ($("kb-store").value.trim()) body.store_url = $("kb-store").value.trim();
    $("kb-new").disabled = true;
    try {
      const kb = await api.createKb(body);
      state.kb = kb.name;
      notify(t("kbCreated", { name: kb.name }), "info");
      await loadKbs();
    } catch (exc) {
      fail(exc);
    } finally {
      $("kb-new").disabled = false;
    }
  });
}

// ---------------------------------------------------------------- documents and uploads

async function loadDocs() {
  if (!state.kb) {
    state.docs = [];
    renderDocs();
    return;
  }
  try {
    state.docs = (await api.listDocuments(state.kb)).documents;
  } catch (exc) {
    fail(exc);
  }
  renderDocs();
}

function statusBadge(status) {
  return el("span", `badge st-${status}`, t(`st_${status}`));
}

function renderDocs() {
  $("uploads").replaceChildren(...state.uploads.map((u) => {
    const li = el("li", `upload st-${u.status}`);
    li.dataset.name = u.name;
    const head = el("div", "doc-head");
    head.append(el("span", "doc-name", u.name), statusBadge(u.status));
    li.append(head);
    const bar = el("progress");
    bar.max = 1;
    bar.value = u.status === "uploading" ? u.progress : 1;
    if (u.status === "queued" || u.status === "indexing") bar.removeAttribute("value");
    bar.setAttribute("aria-label", u.name);
    if (u.status !== "failed") li.append(bar);
    const meta = el("div", "muted small", size(u.size));
    li.append(meta);
    if (u.error) li.append(el("div", "doc-error small", u.error));
    if (u.status === "failed") {
      li.append(button("×", "icon-btn corner", () => {
        state.uploads = state.uploads.filter((x) => x !== u);
        renderDocs();
      }, t("close")));
    }
    return li;
  }));
  $("doc-list").replaceChildren(...state.docs.map((d) => {
    const li = el("li", `doc st-${d.status}`);
    li.dataset.name = d.name;
    const head = el("div", "doc-head");
    head.append(el("span", "doc-name", d.name), statusBadge(d.status));
    const meta = el("div", "muted small");
    meta.textContent = [size(d.size), d.status === "indexed" ? t("chunks", { n: d.chunk_count }) : ""]
      .filter(Boolean).join(" · ");
    li.append(head, meta);
    if (d.error) li.append(el("div", "doc-error small", d.error));
    const remove = button("", "icon-btn corner", () => removeDocument(d), t("deleteDoc", { name: d.name }));
    remove.append(el("span", "icon i-trash"));
    li.append(remove);
    return li;
  }));
  $("doc-empty").hidden = state.docs.length > 0 || state.uploads.length > 0;
}

function confirmDialog(text) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function removeDocument(doc) {
  if (!(await confirmDialog(t("confirmDeleteDoc", { name: doc.name })))) return;
  try {
    await api.deleteDocument(state.kb, doc.id);
    notify(t("deleted", { name: doc.name }), "info");
  } catch (exc) {
    fail(exc);
  }
  await Promise.all([loadDocs(), refreshKbInfo()]);
}

async function uploadFiles(files) {
  if (!state.kb) {
    notify(t("selectKbFirst"));
    return;
  }
  const kb = state.kb;
  await Promise.all([...files].map(async (file) => {
    const item = { name: file.name, size: file.size, progress: 0, status: "uploading", error: "" };
    state.uploads = [...state.uploads.filter((u) => u.name !== file.name), item];
    renderDocs();
    try {
      const job = await api.upload(kb, file, (p) => {
        item.progress = p;
        renderDocs();
      });
      item.status = "queued";
      renderDocs();
      await followJob(kb, job, item);
    } catch (exc) {
      item.status = "failed";
      item.error = explain(exc);
      if (exc instanceof api.ApiError && exc.status === 401) fail(exc);
      renderDocs();
    }
  }));
  if (kb === state.kb) await refreshKbInfo();
}

async function followJob(kb, job, item) {
  let final = job;
  await api.jobEvents(job.id, (event, data) => {
    final = data;
    item.status = data.status === "running" ? "indexing" : data.status === "queued" ? "queued" : item.status;
    renderDocs();
    if (kb === state.kb) loadDocs();
  });
  const errors = (final.errors || []).map((e) => e.error).join("; ");
  if (final.status === "done" && !final.files_failed) {
    state.uploads = state.uploads.filter((u) => u !== item);
  } else {
    item.status = "failed";
    item.error = errors || final.status;
    // A file the pipeline rejected has a catalog row with its reason: show it once, there.
    if (state.docs.some((d) => d.name === item.name && d.status === "failed")) {
      state.uploads = state.uploads.filter((u) => u !== item);
    }
  }
  if (kb === state.kb) await loadDocs();
}

function bindUploads() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    uploadFiles(input.files);
    input.value = "";
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer?.files?.length) uploadFiles(e.dataTransfer.files);
  });
  $("docs-toggle").addEventListener("click", () => {
    const open = $("docs-panel").classList.toggle("open");
    $("docs-toggle").setAttribute("aria-expanded", String(open));
  });
}

// ---------------------------------------------------------------- conversation

const chatKey = () => `rag.chat.${state.kb}`;

function loadConversation() {
  try {
    state.messages = JSON.parse(localStorage.getItem(chatKey()) || "[]");
  } catch {
    state.messages = [];
  }
  renderConversation();
}

function saveConversation() {
  const done = state.messages.map(({ node, ...m }) => (m.status === "streaming" ? { ...m, status: "stopped" } : m));
  localStorage.setItem(chatKey(), JSON.stringify(done));
}

function renderConversation() {
  $("messages").replaceChildren(...state.messages.map(messageNode));
  showEmpty(state.messages.length === 0);
}

function messageNode(msg) {
  const li = el("li", `msg ${msg.role}`);
  li.setAttribute("aria-label", msg.role === "user" ? t("you") : t("assistant"));
  const body = el("div", "md");
  li.append(body);
  if (msg.role === "user") {
    body.textContent = msg.text;
    return li;
  }
  li.dataset.status = msg.status;
  const sources = el("section", "sources");
  const foot = el("div", "msg-foot");
  li.append(sources, foot);
  msg.node = { li, body, sources, foot };
  paintAnswer(msg);
  return li;
}

function citeLink(msg, n) {
  if (!msg.sources?.[n - 1]) return null;
  const a = el("a", "cite", `[${n}]`);
  a.href = `#source-${n}`;
  a.setAttribute("role", "button");
  a.setAttribute("aria-label", t("sourceLink", { n }));
  a.addEventListener("click", (e) => {
    e.preventDefault();
    openSource(msg, n);
  });
  return a;
}

function paintAnswer(msg) {
  const { li, body, sources, foot } = msg.node;
  li.dataset.status = msg.status;
  li.setAttribute("aria-busy", String(msg.status === "streaming"));
  body.replaceChildren(render(msg.text, { cite: (n) => citeLink(msg, n) }));
  if (msg.status === "streaming" && !msg.text) body.append(el("span", "muted thinking", t("thinking")));
  if (msg.abstained && !msg.text.trim()) body.append(el("p", "muted", t("abstained")));
  if (msg.status === "stopped") body.append(el("p", "muted small", t("stopped")));
  if (msg.status === "error") body.append(el("p", "doc-error", msg.error));

  const cited = new Set(msg.cited ?? []);
  sources.replaceChildren();
  if (msg.sources?.length) {
    sources.append(el("h3", "small", t("sources")));
    const list = el("ol");
    msg.sources.forEach((s, i) => {
      const item = el("li", cited.has(i + 1) ? "source cited" : "source");
      const open = button("", "source-btn", () => openSource(msg, i + 1));
      open.append(el("span", "source-n", `[${i + 1}]`), el("span", "source-name", s.document_name));
      if (s.page) open.append(el("span", "muted small", ` · ${t("page", { n: s.page })}`));
      item.append(open);
      list.append(item);
    });
    sources.append(list);
  }

  foot.replaceChildren();
  if (msg.status !== "streaming" && msg.text) {
    const copy = button(t("copy"), "btn subtle small", async () => {
      await copyText(msg.text);
      copy.textContent = t("copied");
      setTimeout(() => (copy.textContent = t("copy")), 1500);
    });
    foot.append(copy);
  }
  const tm = msg.timings;
  if (tm) {
    const text = tm.time_to_first_token_ms == null
      ? t("retrievalOnly", { retrieval: Math.round(tm.retrieval_ms) })
      : t("timings", {
        retrieval: Math.round(tm.retrieval_ms),
        ttft: Math.round(tm.time_to_first_token_ms),
        tps: (tm.tokens_per_second ?? 0).toFixed(1),
      });
    foot.append(el("span", "timings muted small", text));
  }
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

function openSource(msg, n) {
  const src = msg.sources[n - 1];
  if (!src) return;
  $("source-title").textContent = `[${n}] ${src.document_name}`;
  const meta = [t("passageOf", { n })];
  if (src.page) meta.push(t("page", { n: src.page }));
  if (typeof src.score === "number") meta.push(t("score", { s: src.score.toFixed(3) }));
  $("source-meta").textContent = meta.join(" · ");
  const box = $("source-text");
  const span = citedSpan(src.text, claimFor(msg.text, n));
  if (span) {
    const mark = el("mark", "", src.text.slice(span[0], span[1]));
    box.replaceChildren(src.text.slice(0, span[0]), mark, src.text.slice(span[1]));
  } else {
    box.replaceChildren(src.text);
  }
  $("source-dialog").showModal();
  box.querySelector("mark")?.scrollIntoView({ block: "center" });
}

function history() {
  return state.messages
    .filter((m) => m.status === undefined || m.status === "done")
    .slice(-HISTORY_TURNS)
    .map((m) => ({ role: m.role, content: m.text }));
}

async function sendQuestion() {
  const input = $("question");
  const query = input.value.trim();
  if (!query || state.running) return;
  if (!state.kb) {
    notify(t("selectKbFirst"));
    return;
  }
  const previous = history();
  const user = { role: "user", text: query };
  const answer = { role: "assistant", text: "", sources: [], status: "streaming" };
  state.messages.push(user, answer);
  $("messages").append(messageNode(user), messageNode(answer));
  showEmpty(false);
  input.value = "";
  autoGrow();
  answer.node.li.scrollIntoView({ block: "end" });

  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  let frame = 0;
  const repaint = () => {
    if (!frame) {
      frame = requestAnimationFrame(() => {
        frame = 0;
        paintAnswer(answer);
        answer.node.li.scrollIntoView({ block: "end" });
      });
    }
  };
  try {
    await api.ask(state.kb, { query, history: previous, ...retrievalParams() }, (event, data) => {
      if (event === "citations") answer.sources = data.sources;
      else if (event === "delta") answer.text += data.text;
      else if (event === "done") {
        const a = data.answer;
        Object.assign(answer, {
          text: a.text, timings: a.timings, abstained: a.abstained, status: "done",
          cited: a.citations.map((c) => c.n),
        });
      } else if (event === "error") {
        Object.assign(answer, { status: "error", error: data.error.message });
      }
      repaint();
    }, controller.signal);
    if (answer.status === "streaming") answer.status = "stopped";
  } catch (exc) {
    if (exc.name === "AbortError") answer.status = "stopped";
    else {
      Object.assign(answer, { status: "error", error: explain(exc) });
      if (exc instanceof api.ApiError && exc.status === 401) fail(exc);
    }
  } finally {
    cancelAnimationFrame(frame);
    state.running = null;
    setRunning(false);
    paintAnswer(answer);
    saveConversation();
    input.focus();
  }
}

function showEmpty(empty) {
  $("chat-empty").hidden = !empty;
  $("messages").hidden = empty;
}

function setRunning(running) {
  $("send").hidden = running;
  $("stop").hidden = !running;
}

function autoGrow() {
  const input = $("question");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

function bindChat() {
  const input = $("question");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendQuestion();
  });
  input.addEventListener("keydown", (e) => {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition does neither.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      sendQuestion();
    }
  });
  input.addEventListener("input", autoGrow);
  $("stop").addEventListener("click", () => state.running?.abort());
  $("clear-chat").addEventListener("click", () => {
    state.running?.abort();
    state.messages = [];
    localStorage.removeItem(chatKey());
    renderConversation();
  });
}

// ---------------------------------------------------------------- language and start

function applyLanguage() {
  apply();
  $("lang-toggle").textContent = lang() === "zh" ? "EN" : "中文";
  renderKbs();
  renderDocs();
  renderConversation();
}

function start() {
  bindSettings();
  bindKeyDialog();
  bindKbs();
  bindUploads();
  bindChat();
  $("lang-toggle").addEventListener("click", () => {
    setLang(lang() === "zh" ? "en" : "zh");
    applyLanguage();
  });
  applyLanguage();
  loadKbs();
  $("question").focus();
}

start();
