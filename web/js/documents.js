// Documents: the list, uploads with per-file progress, ingestion progress from job events.

import * as api from "./api.js";
import { t } from "./i18n.js";
import { $, button, el, explain, fail, notify, size, state } from "./ui.js";

/** Called after uploads and deletions change the knowledge base's counts. */
export const hooks = { kbChanged: async () => {} };

export async function loadDocs() {
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

export function renderDocs() {
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
  await Promise.all([loadDocs(), hooks.kbChanged()]);
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
  if (kb === state.kb) await hooks.kbChanged();
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

export function bindUploads() {
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
