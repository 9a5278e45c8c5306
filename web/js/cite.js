// Which part of a cited passage supports the answer: the passage sentence sharing the most
// words (Latin words, numbers, Chinese character pairs) with the answer sentences citing it.

const SENTENCE = /[^。！？!?\n]+?(?:[。！？!?]+[”"」』)]?|\.(?=\s|$)|\n|$)/g;
const CJK = /[\u3400-\u9fff\uf900-\ufaff]/;
const STOP = new Set(("the a an of to in on at for and or is are was were be been it its this that " +
  "with as by from which what who how when where").split(" "));

export function tokens(text) {
  const out = new Set();
  for (const m of String(text).toLowerCase().matchAll(/[\p{L}\p{N}]+/gu)) {
    const word = m[0];
    if (CJK.test(word)) {
      const chars = [...word];
      if (chars.length === 1) out.add(chars[0]);
      for (let i = 0; i + 1 < chars.length; i += 1) out.add(chars[i] + chars[i + 1]);
    } else if ((word.length > 1 || /\d/.test(word)) && !STOP.has(word)) {
      out.add(word);
    }
  }
  return out;
}

/** Sentences of ``text`` with their offsets: [{start, end, text}]. */
export function sentences(text) {
  const out = [];
  for (const m of String(text).matchAll(SENTENCE)) {
    if (m[0].trim()) out.push({ start: m.index, end: m.index + m[0].length, text: m[0] });
  }
  return out;
}

/** The answer sentences that carry the marker ``[n]``, joined. */
export function claimFor(answer, n) {
  const marker = new RegExp(`[\\[【]\\s*${n}\\s*[\\]】]`);
  return sentences(answer).filter((s) => marker.test(s.text)).map((s) => s.text).join(" ");
}

/** [start, end) of the passage sentence that best supports ``claim``, or null if none does. */
export function citedSpan(passage, claim) {
  const want = tokens(claim.replace(/[\[【]\s*\d+\s*[\]】]/g, " "));
  let best = null;
  let bestScore = 0;
  for (const s of sentences(passage)) {
    const have = tokens(s.text);
    let shared = 0;
    for (const tok of have) if (want.has(tok)) shared += 1;
    const score = shared / Math.sqrt(have.size || 1);
    if (shared > 0 && score > bestScore) {
      best = s;
      bestScore = score;
    }
  }
  if (!best) return null;
  const lead = best.text.length - best.text.trimStart().length;
  return [best.start + lead, best.start + best.text.trimEnd().length];
}
