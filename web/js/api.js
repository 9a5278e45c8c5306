// The HTTP API as the page uses it: JSON calls, server-sent events over fetch (so the API key
// header travels with them, which EventSource cannot do), and uploads with progress.

const KEY = "rag.apiKey";

export class ApiError extends Error {
  /** ``type`` is the server's error type (NotFound, InvalidInput, …) or "NetworkError". */
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY) || "";
}

export function setApiKey(value) {
  if (value) localStorage.setItem(KEY, value);
  else localStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  let type = "HTTPError";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error) ({ type, message } = body.error);
    else if (body?.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, type, message);
}

async function send(method, path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "NetworkError", exc.message);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function call(method, path, body) {
  const response = await send(method, path, body);
  return response.status === 204 ? null : response.json();
}

const kbPath = (kb) => `/v1/knowledge-bases/${encodeURIComponent(kb)}`;

export const listKbs = () => call("GET", "/v1/knowledge-bases");
export const createKb = (body) => call("POST", "/v1/knowledge-bases", body);
export const listDocuments = (kb) => call("GET", `${kbPath(kb)}/documents?limit=1000`);
export const deleteDocument = (kb, id) => call("DELETE", `${kbPath(kb)}/documents/${encodeURIComponent(id)}`);

/**
 * POST ``body`` (or GET when body is null) and call ``onEvent(event, data)`` for each
 * server-sent event until the stream ends. ``signal`` aborts it.
 */
export async function stream(path, body, onEvent, signal) {
  const response = await send(body === null ? "GET" : "POST", path, body ?? undefined, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

export const ask = (kb, body, onEvent, signal) =>
  stream(`${kbPath(kb)}/ask`, { ...body, stream: true }, onEvent, signal);

export const jobEvents = (jobId, onEvent, signal) =>
  stream(`/v1/jobs/${encodeURIComponent(jobId)}/events`, null, onEvent, signal);

/** Upload one file; ``onProgress(fraction)`` while it is sent; resolves to the job. */
export function upload(kb, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${kbPath(kb)}/documents`);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // fall through to the status line
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body.job);
      else reject(new ApiError(xhr.status, body?.error?.type ?? "HTTPError",
        body?.error?.message ?? `${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => reject(new ApiError(0, "NetworkError", "the upload was interrupted"));
    const form = new FormData();
    form.append("files", file, file.name);
    xhr.send(form);
  });
}
