"""Hugging Face `tokenizers` encoding the same text as bench/tokenizer_bench.cpp, single-threaded.

    tokenizer_peer.py TOKENIZER.json TEXT_FILE --repeats N --chunk-kb K --ids-out IDS_FILE

Splits TEXT_FILE into the chunks tokenizer_bench uses (whole lines, a chunk closed once it holds at
least K KiB), encodes every chunk with encode(chunk, add_special_tokens=False) per repeat (a fresh
Tokenizer each repeat, so its pre-token cache starts empty as ours does), and prints one JSON line:
{"seconds": [...], "bytes": B, "tokens": T}, and writes the ids of the first repeat to IDS_FILE
(uint32, native byte order) for tokenizer_bench to compare with its own.
RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false are set before tokenizers is imported.
"""
import argparse
import array
import json
import os
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402


def chunks(data, chunk_bytes):
    out, start = [], 0
    while start < len(data):
        end = min(len(data), start + chunk_bytes)
        nl = data.find(b"\n", end - 1) if end < len(data) else -1
        end = len(data) if nl < 0 else nl + 1
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("text")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-kb", type=int, default=64)
    ap.add_argument("--ids-out", required=True)
    a = ap.parse_args()
    with open(a.text, "rb") as f:
        data = f.read()
    parts = chunks(data, a.chunk_kb * 1024)
    seconds, ids = [], []
    for r in range(a.repeats):
        tok = Tokenizer.from_file(a.tokenizer)
        t0 = time.perf_counter()
        encs = [tok.encode(p, add_special_tokens=False) for p in parts]
        seconds.append(time.perf_counter() - t0)
        if r == 0:
            for e in encs:
                ids.extend(e.ids)
    with open(a.ids_out, "wb") as f:
        array.array("I", ids).tofile(f)
    print(json.dumps({"seconds": seconds, "bytes": len(data), "tokens": len(ids)}))


if __name__ == "__main__":
    main()
