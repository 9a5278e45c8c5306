// The conversation: streamed answers, citations that open their passage, retrieval settings.

import * as api from "./api.js";
import { claimFor, citedSpan } from "./cite.js";
import { t } from "./i18n.js";
import { render } from "./markdown.js";
import { $, button, el, explain, fail, notify, state } from "./ui.js";

const HISTORY_TURNS = 6;

export function bindSettings() {
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

const chatKey = () => `rag.chat.${state.kb}`;

export function loadConversation() {
  try {
    state.messages = JSON.parse(localStorage.getItem(chatKey()) || "[]");
  } catch {
    state.messages = [];
  }
  renderConversation();
}

function saveConversation() {
  const done = state.messages.map((m) => {
    const copy = { ...m, status: m.status === "streaming" ? "stopped" : m.status };
    delete copy.node; // DOM elements of the page, not part of the conversation
    return copy;
  });
  localStorage.setItem(chatKey(), JSON.stringify(done));
}

export function renderConversation() {
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
  if (msg.cutOff) body.append(el("p", "muted small cut-off", t("cutOff")));
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
          cutOff: a.finish_reason === "length",
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

export function bindChat() {
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
