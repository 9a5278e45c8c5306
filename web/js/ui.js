// Shared by the page's modules: the state, DOM helpers, and how errors are shown.

import * as api from "./api.js";
import { t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

export const state = {
  kbs: [],
  kb: localStorage.getItem("rag.kb") || "",
  docs: [],
  uploads: [], // {id, name, size, progress, status, error}
  messages: [],
  running: null, // the AbortController of the answer being written
  settings: loadSettings(),
};

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(label, className, onClick, aria) {
  const b = el("button", className, label);
  b.type = "button";
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", onClick);
  return b;
}

export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function notify(message, kind = "error") {
  const box = $("alerts");
  const note = el("div", `alert ${kind}`);
  note.append(el("span", "", message), button("×", "icon-btn", () => note.remove(), t("close")));
  box.append(note);
  while (box.children.length > 3) box.firstChild.remove();
  if (kind !== "error") setTimeout(() => note.remove(), 4000);
}

export function explain(exc) {
  if (exc instanceof api.ApiError) {
    if (exc.type === "NetworkError") return t("netError", { detail: exc.message });
    return exc.message;
  }
  return String(exc?.message ?? exc);
}

/** Show an error the user can act on; a missing or wrong key opens the key dialog. */
export function fail(exc) {
  if (exc instanceof api.ApiError && exc.status === 401) {
    notify(api.apiKey() ? t("keyRejected") : t("keyNeeded"));
    openKeyDialog();
    return;
  }
  notify(explain(exc));
}

function loadSettings() {
  try {
    return { mode: "", top_k: "", min_score: "", ...JSON.parse(localStorage.getItem("rag.settings") || "{}") };
  } catch {
    return { mode: "", top_k: "", min_score: "" };
  }
}

export function openKeyDialog() {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-input").value = api.apiKey();
  dialog.showModal();
}
