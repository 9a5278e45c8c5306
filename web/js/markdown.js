// A small Markdown renderer that builds DOM nodes and never parses HTML: text from documents
// and from the model is only ever set through textContent, so "<script>" or "<img onerror>"
// in either shows up as text. Covers what answers use: paragraphs, headings, lists, quotes,
// fenced code (highlighted), inline code, bold, italics, http(s) links and citation markers.

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const ORDERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Render ``text`` as Markdown into a DocumentFragment. ``options.cite(n)`` returns an element
 * for the citation marker ``[n]`` (or null to keep it as text).
 */
export function render(text, options = {}) {
  const frag = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) {
      const p = el("p");
      para.forEach((line, k) => {
        if (k) p.append(el("br"));
        p.append(inline(line, options));
      });
      frag.append(p);
      para = [];
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(m[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of a stream still being written)
      frag.append(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    if (!line.trim()) {
      flush();
    } else if ((m = line.match(HEADING))) {
      flush();
      const h = el(`h${Math.min(6, m[1].length + 2)}`);
      h.append(inline(m[2], options));
      frag.append(h);
    } else if (RULE.test(line)) {
      flush();
      frag.append(el("hr"));
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      flush();
      const ordered = !BULLET.test(line);
      const list = el(ordered ? "ol" : "ul");
      if (ordered) list.start = Number(line.match(ORDERED)[1]);
      while (i < lines.length && (ordered ? ORDERED : BULLET).test(lines[i])) {
        const item = el("li");
        item.append(inline(lines[i].match(ordered ? ORDERED : BULLET).at(-1), options));
        list.append(item);
        i += 1;
      }
      frag.append(list);
      continue;
    } else if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      const q = el("blockquote");
      q.append(render(quoted.join("\n"), options));
      frag.append(q);
      continue;
    } else {
      para.push(line);
    }
    i += 1;
  }
  flush();
  return frag;
}

// Inline: `code`, **bold**, *italic* / _italic_, [text](http…), [n] citations, bare URLs.
const INLINE = new RegExp(
  [
    "(`+)([\\s\\S]*?[^`])\\1(?!`)", // 1,2 code
    "\\*\\*([^*]+?)\\*\\*|(?<![\\w])__([^_]+?)__(?![\\w])", // 3,4 bold (no intraword _)
    "\\*([^*\\s][^*]*?)\\*|(?<![\\w])_([^_\\s][^_]*?)_(?![\\w])", // 5,6 italic
    "\\[([^\\]\\n]+)\\]\\((https?:\\/\\/[^\\s)]+)\\)", // 7,8 link
    "[\\[【]\\s*(\\d{1,3})\\s*[\\]】]", // 9 citation
    "(https?:\\/\\/[^\\s<>()\\[\\]]+[^\\s<>()\\[\\].,;:!?。，；：！？])", // 10 bare URL
  ].join("|"),
  "g",
);

export function inline(text, options = {}) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[2] !== undefined) frag.append(el("code", "", m[2]));
    else if (m[3] !== undefined || m[4] !== undefined) {
      const b = el("strong");
      b.append(inline(m[3] ?? m[4], options));
      frag.append(b);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const e = el("em");
      e.append(inline(m[5] ?? m[6], options));
      frag.append(e);
    } else if (m[7] !== undefined) frag.append(link(m[8], m[7]));
    else if (m[9] !== undefined) {
      const node = options.cite ? options.cite(Number(m[9])) : null;
      frag.append(node ?? m[0]);
    } else if (m[10] !== undefined) frag.append(link(m[10], m[10]));
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

function link(href, label) {
  const a = el("a", "", label);
  a.href = href; // only http(s) reaches here: the patterns above admit no other scheme
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}

// Code highlighting: one tokenizer for the languages answers show most (Python, JS/TS, shell,
// SQL, JSON, C-like); unknown languages get the same generic treatment.
const KEYWORDS = new Set(
  ("and as assert async await break case catch class const continue def default del do elif " +
    "else export extends false False finally for from function if import in instanceof is " +
    "lambda let new none None not null of or pass raise return self static switch this throw " +
    "true True try typeof var void while with yield select insert update delete where join " +
    "group order by limit create table values into set fn pub struct impl use mut match enum " +
    "interface type package func go defer int float str bool echo fi then done esac local").split(" "),
);
const TOKENS = new RegExp(
  [
    "(\\/\\/[^\\n]*|#[^\\n]*|--[^\\n]*|\\/\\*[\\s\\S]*?\\*\\/)", // 1 comment
    "(\"\"\"[\\s\\S]*?\"\"\"|'''[\\s\\S]*?'''|\"(?:\\\\.|[^\"\\\\\\n])*\"|'(?:\\\\.|[^'\\\\\\n])*'|`(?:\\\\.|[^`\\\\])*`)", // 2 string
    "\\b(\\d+(?:\\.\\d+)?(?:e[+-]?\\d+)?|0x[\\da-f]+)\\b", // 3 number
    "\\b([A-Za-z_][\\w]*)\\b", // 4 word
  ].join("|"),
  "gi",
);

export function highlight(code, language = "") {
  const frag = document.createDocumentFragment();
  const lang = language.toLowerCase();
  const hashComments = !["js", "javascript", "ts", "typescript", "c", "cpp", "java", "go", "rust", "css"].includes(lang);
  const dashComments = ["sql", "lua", "haskell"].includes(lang);
  let last = 0;
  for (const m of code.matchAll(TOKENS)) {
    let cls = "";
    if (m[1] !== undefined) {
      const c = m[1];
      if ((c.startsWith("#") && !hashComments) || (c.startsWith("--") && !dashComments)) continue;
      cls = "tok-comment";
    } else if (m[2] !== undefined) cls = "tok-string";
    else if (m[3] !== undefined) cls = "tok-number";
    else if (m[4] !== undefined && KEYWORDS.has(m[4])) cls = "tok-keyword";
    else continue;
    if (m.index < last) continue;
    if (m.index > last) frag.append(code.slice(last, m.index));
    frag.append(el("span", cls, m[0]));
    last = m.index + m[0].length;
  }
  if (last < code.length) frag.append(code.slice(last));
  return frag;
}

function codeBlock(code, language) {
  const pre = el("pre", "code-block");
  const c = el("code");
  if (language) {
    c.dataset.lang = language;
    pre.append(el("span", "code-lang", language));
  }
  c.append(highlight(code, language));
  pre.append(c);
  return pre;
}
