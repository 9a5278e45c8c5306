// The chat page: knowledge bases, uploads with live ingestion progress, documents, and a chat
// whose answers stream in and cite their sources. This module wires the parts together.

import * as api from "./api.js";
import { bindChat, bindSettings, loadConversation, renderConversation } from "./chat.js";
import { bindUploads, hooks, loadDocs, renderDocs } from "./documents.js";
import { apply, lang, setLang, t } from "./i18n.js";
import { $, el, fail, notify, openKeyDialog, state } from "./ui.js";

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

// ---------------------------------------------------------------- language and start

function applyLanguage() {
  apply();
  $("lang-toggle").textContent = lang() === "zh" ? "EN" : "中文";
  renderKbs();
  renderDocs();
  renderConversation();
}

function start() {
  hooks.kbChanged = refreshKbInfo;
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
