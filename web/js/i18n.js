// UI strings in English and Chinese. The language follows the browser until the user picks one.

const STRINGS = {
  en: {
    documents: "Documents", knowledgeBase: "Knowledge base", newKb: "New", settings: "Retrieval settings",
    apiKey: "API key", language: "Switch to Chinese", dropHint: "Drop files here or choose them",
    fileTypes: "txt, md, html, pdf, docx", chooseFiles: "Choose files", noDocuments: "No documents yet.",
    chat: "Chat", clearChat: "Clear conversation", question: "Question",
    emptyChat: "Ask a question about the documents of this knowledge base.",
    askPlaceholder: "Ask a question…", keysHint: "Enter sends · Shift+Enter adds a line",
    send: "Send", stop: "Stop", mode: "Mode", modeDefault: "server default", modeHybrid: "hybrid",
    modeDense: "dense (embeddings)", modeKeyword: "keyword (BM25)", topK: "Passages (top-k)",
    minScore: "Score threshold", settingsHint: "Kept in this browser.", close: "Close",
    newKbTitle: "New knowledge base", name: "Name", nameHint: 'Letters, digits, ".", "-" and "_".',
    description: "Description", storeUrl: "Vector store URL (optional)", cancel: "Cancel",
    create: "Create", keyHint: "This server requires an API key. It is kept in this browser.",
    save: "Save", delete: "Delete", noKb: "No knowledge base yet: create one to start.",
    kbInfo: "{docs} {docs|document|documents} · {chunks} {chunks|chunk|chunks} · {store}",
    st_uploading: "uploading", st_queued: "queued", st_indexing: "indexing", st_indexed: "indexed",
    st_failed: "failed", st_unchanged: "unchanged",
    chunks: "{n} {n|chunk|chunks}", confirmDeleteDoc: "Delete “{name}” and its passages from this knowledge base?",
    deleted: "Deleted {name}.", sources: "Sources", copy: "Copy", copied: "Copied",
    stopped: "Stopped.", abstained: "No passage in this knowledge base answers that.",
    cutOff: "The answer reached the length limit and was cut off.",
    timings: "retrieval {retrieval} ms · first token {ttft} ms · {tps} tokens/s",
    retrievalOnly: "retrieval {retrieval} ms", page: "page {n}", score: "score {s}",
    passageOf: "Passage {n}", you: "You", assistant: "Assistant", thinking: "Searching…",
    netError: "Cannot reach the server ({detail}). Is it running?",
    keyNeeded: "This server requires an API key.", keyRejected: "The server rejected the API key.",
    keySaved: "API key saved.", keyCleared: "API key removed.", sourceLink: "Show source {n}",
    deleteDoc: "Delete {name}", uploadFailed: "Upload of {name} failed: {message}",
    selectKbFirst: "Create or pick a knowledge base first.", kbCreated: "Knowledge base {name} created.",
  },
  zh: {
    documents: "文档", knowledgeBase: "知识库", newKb: "新建", settings: "检索设置",
    apiKey: "API 密钥", language: "切换到英文", dropHint: "把文件拖到这里，或点击选择",
    fileTypes: "txt、md、html、pdf、docx", chooseFiles: "选择文件", noDocuments: "还没有文档。",
    chat: "对话", clearChat: "清空对话", question: "问题",
    emptyChat: "就这个知识库里的文档提一个问题吧。",
    askPlaceholder: "输入问题…", keysHint: "Enter 发送 · Shift+Enter 换行",
    send: "发送", stop: "停止", mode: "检索方式", modeDefault: "服务器默认", modeHybrid: "混合",
    modeDense: "向量（语义）", modeKeyword: "关键词（BM25）", topK: "段落数（top-k）",
    minScore: "相关度阈值", settingsHint: "保存在本浏览器中。", close: "关闭",
    newKbTitle: "新建知识库", name: "名称", nameHint: "字母、数字、“.”、“-” 和 “_”。",
    description: "描述", storeUrl: "向量库 URL（可选）", cancel: "取消",
    create: "创建", keyHint: "此服务器需要 API 密钥，密钥保存在本浏览器中。",
    save: "保存", delete: "删除", noKb: "还没有知识库：先新建一个。",
    kbInfo: "{docs} 个文档 · {chunks} 个段落 · {store}",
    st_uploading: "上传中", st_queued: "排队中", st_indexing: "索引中", st_indexed: "已索引",
    st_failed: "失败", st_unchanged: "未变化",
    chunks: "{n} 个段落", confirmDeleteDoc: "从知识库中删除“{name}”及其段落？",
    deleted: "已删除 {name}。", sources: "来源", copy: "复制", copied: "已复制",
    stopped: "已停止。", abstained: "知识库中没有能回答这个问题的段落。",
    cutOff: "回答达到长度上限，已被截断。",
    timings: "检索 {retrieval} 毫秒 · 首字 {ttft} 毫秒 · 每秒 {tps} 个词元",
    retrievalOnly: "检索 {retrieval} 毫秒", page: "第 {n} 页", score: "相关度 {s}",
    passageOf: "段落 {n}", you: "你", assistant: "助手", thinking: "检索中…",
    netError: "无法连接服务器（{detail}）。服务器在运行吗？",
    keyNeeded: "此服务器需要 API 密钥。", keyRejected: "服务器拒绝了这个 API 密钥。",
    keySaved: "API 密钥已保存。", keyCleared: "API 密钥已删除。", sourceLink: "查看来源 {n}",
    deleteDoc: "删除 {name}", uploadFailed: "{name} 上传失败：{message}",
    selectKbFirst: "请先新建或选择一个知识库。", kbCreated: "知识库 {name} 已创建。",
  },
};

const KEY = "rag.lang";
let current = pickLanguage();

function pickLanguage() {
  const saved = localStorage.getItem(KEY);
  if (saved === "en" || saved === "zh") return saved;
  const langs = navigator.languages?.length ? navigator.languages : [navigator.language || "en"];
  return langs.some((l) => l.toLowerCase().startsWith("zh")) ? "zh" : "en";
}

export function lang() {
  return current;
}

export function setLang(value) {
  current = value === "zh" ? "zh" : "en";
  localStorage.setItem(KEY, current);
  apply();
}

/** The string for ``key`` with ``{name}`` placeholders filled from ``vars``, and
 * ``{name|one|other}`` the word for that count ("1 chunk", "2 chunks"). */
export function t(key, vars = {}) {
  const s = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return s
    .replace(/\{(\w+)\|([^|}]*)\|([^}]*)\}/g, (_, k, one, other) => (Number(vars[k]) === 1 ? one : other))
    .replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : `{${k}}`));
}

/** Translate the static page: text, aria-labels and placeholders marked with data-i18n*. */
export function apply(root = document) {
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    el.title = t(el.dataset.i18nLabel);
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}
