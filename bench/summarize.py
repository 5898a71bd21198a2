#!/usr/bin/env python3
"""Markdown summary of the runs bench/scaling.sh made.

Input: a manifest, one JSON object per line, written by scaling.sh for every run:
  {"group": "weak", "label": "np1-none-1", "np": 1, "bind": "none", "mode": "lora",
   "overlap": true, "bucket_mb": 25, "dir": RUN_DIR, "command": "...", "seconds": 12.3}
plus optional {"bucket": {...}} objects (bucket_count's JSON, with a "bucket_mb" key).

From each run's RUN_DIR/metrics.jsonl (one object per log window of log_every steps):
  tokens/s      median of the tokens_per_s values after the first window (warm-up excluded);
                tokens_per_s is global (all ranks) since tokens_per_step is the global batch.
  step time     tokens_per_step / tokens/s, with tokens_per_step = tokens_seen / step.
  exposed comm  median of comm_exposed_ms_per_step over the same windows.
  bytes/step    comm_bytes_per_step of the last window.

Usage: summarize.py MANIFEST
"""
import json
import statistics
import sys


def load_metrics(run_dir):
    rows = []
    with open(f"{run_dir}/metrics.jsonl") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    if len(rows) < 2:
        raise SystemExit(f"summarize.py: {run_dir}/metrics.jsonl has {len(rows)} windows; "
                         "need at least 2 (the first is warm-up)")
    return rows


def run_stats(run):
    rows = load_metrics(run["dir"])
    steady = rows[1:]
    tok_s = statistics.median(r["tokens_per_s"] for r in steady)
    tokens_per_step = rows[-1]["tokens_seen"] / rows[-1]["step"]
    step_ms = 1000.0 * tokens_per_step / tok_s
    exposed_ms = statistics.median(r["comm_exposed_ms_per_step"] for r in steady)
    return {
        "tok_s": tok_s,
        "tok_s_windows": [r["tokens_per_s"] for r in steady],
        "tokens_per_step": tokens_per_step,
        "step_ms": step_ms,
        "exposed_ms": exposed_ms,
        "exposed_share": exposed_ms / step_ms,
        "bytes": rows[-1]["comm_bytes_per_step"],
        "n_windows": len(steady),
    }


def fmt_spread(values, digits=0):
    return f"{min(values):.{digits}f} to {max(values):.{digits}f}"


def weak_scaling(runs, bind, out):
    ones = [r for r in runs if r["group"] == "weak" and r["bind"] == bind and r["np"] == 1]
    twos = [r for r in runs if r["group"] == "weak" and r["bind"] == bind and r["np"] == 2]
    if not ones or not twos:
        return None
    out.append(f"\n#### `--bind-to {bind}`\n")
    out.append("| run (in order) | ranks | tokens/s (median of windows) | windows (tokens/s) |")
    out.append("|---|---:|---:|---|")
    order = sorted(ones + twos, key=lambda r: r["order"])
    for r in order:
        s = r["stats"]
        windows = ", ".join(f"{v:.0f}" for v in s["tok_s_windows"])
        out.append(f"| {r['label']} | {r['np']} | {s['tok_s']:.0f} | {windows} |")
    t1 = [r["stats"]["tok_s"] for r in ones]
    t2 = [r["stats"]["tok_s"] for r in twos]
    m1, m2 = statistics.median(t1), statistics.median(t2)
    eff = m2 / (2.0 * m1)
    pairs = [b["stats"]["tok_s"] / (2.0 * a["stats"]["tok_s"]) for a, b in zip(ones, twos)]
    out.append("")
    out.append(f"- 1 rank: median {m1:.0f} tokens/s (runs {fmt_spread(t1)})")
    out.append(f"- 2 ranks: median {m2:.0f} tokens/s (runs {fmt_spread(t2)})")
    out.append(f"- weak-scaling efficiency tok/s(2) / (2 x tok/s(1)) = **{100 * eff:.1f}%** "
               f"(adjacent pairs: {', '.join(f'{100 * p:.1f}%' for p in pairs)}; target >= 90%)")
    return eff


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: summarize.py MANIFEST")
    runs, buckets = [], {}
    with open(sys.argv[1]) as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "bucket" in obj:
                b = obj["bucket"]
                buckets[(b["mode"], b["bucket_mb"])] = b
                continue
            obj["order"] = i
            obj["stats"] = run_stats(obj)
            runs.append(obj)

    out = []
    out.append("### Weak scaling: 1 rank vs 2 ranks, same per-rank micro-batch, 1 thread per rank\n")
    out.append("tokens/s counts every rank's tokens. Per run: median of the logged tokens_per_s "
               "windows after the first (warm-up). Efficiency uses the medians over runs.")
    effs = {}
    for bind in ("none", "core"):
        e = weak_scaling(runs, bind, out)
        if e is not None:
            effs[bind] = e
    if len(effs) == 2:
        out.append("\nBinding: `--bind-to core` pins each rank (and the 1-rank baseline) to its own "
                   "core: the fair setting on an otherwise idle machine (no migrations, one rank per "
                   "core as in production). When other processes load the machine (load average "
                   "above), a pinned rank that shares its core with them becomes the straggler and "
                   "`--bind-to none` is the fairer one. Quote the one that matches the machine's "
                   f"state (here: none {100 * effs['none']:.1f}%, core {100 * effs['core']:.1f}%).")

    comm_runs = [r for r in runs if r["group"] == "comm"]
    if comm_runs:
        out.append("\n### Exposed communication at 2 ranks (share of step time)\n")
        out.append("step time = tokens_per_step / tokens_per_s; exposed = comm_exposed_ms_per_step "
                   "(time blocked in waits on all-reduces, which includes waiting for the other "
                   "rank to reach the collective). `--bind-to none`.\n")
        out.append("| bucket_mb | buckets/step | overlap | runs | tokens/s | step (ms) | "
                   "exposed (ms) | exposed share (runs) |")
        out.append("|---:|---:|---|---:|---:|---:|---:|---|")
        configs = {}
        for r in comm_runs:
            configs.setdefault((r["bucket_mb"], not r["overlap"]), []).append(r)
        for (mb, overlap_off), rs in sorted(configs.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
            st = [r["stats"] for r in rs]
            b = buckets.get((rs[0]["mode"], mb))
            nb = str(b["n_buckets"]) if b else "?"
            med = lambda key: statistics.median(x[key] for x in st)
            shares = ", ".join(f"{100 * x['exposed_share']:.1f}%" for x in st)
            out.append(f"| {mb:g} | {nb} | {str(not overlap_off).lower()} | {len(rs)} | "
                       f"{med('tok_s'):.0f} | {med('step_ms'):.1f} | {med('exposed_ms'):.2f} | "
                       f"**{100 * med('exposed_share'):.1f}%** ({shares}) |")
        out.append("\nMedians over runs (each run: median over its windows after the first).")
        for (mode, mb), b in sorted(buckets.items()):
            if mode != "lora":
                continue
            out.append(f"\nbucket_mb {mb:g}: {b['n_buckets']} bucket(s) of "
                       f"{', '.join(str(n) for n in b['bucket_elems_each'])} elements "
                       f"(bucket size {b['bucket_elems']} elements; {b['n_trainable']} trainable).")

    mode_runs = [r for r in runs if r["group"] == "mode"]
    if mode_runs:
        out.append("\n### Bytes all-reduced per step at 2 ranks: LoRA vs full\n")
        out.append("| mode | run | comm_bytes_per_step | MB (1e6 bytes) | tokens/s |")
        out.append("|---|---|---:|---:|---:|")
        by_mode = {}
        for r in mode_runs:
            s = r["stats"]
            by_mode.setdefault(r["mode"], s["bytes"])
            out.append(f"| {r['mode']} | {r['label']} | {s['bytes']:.0f} | {s['bytes'] / 1e6:.3f} | "
                       f"{s['tok_s']:.0f} |")
        if "lora" in by_mode and "full" in by_mode and by_mode["lora"] > 0:
            out.append(f"\nfull / LoRA = {by_mode['full'] / by_mode['lora']:.1f}x fewer bytes with LoRA.")

    out.append("\n### Commands (in the order run)\n")
    out.append("```")
    for r in sorted(runs, key=lambda r: r["order"]):
        out.append(f"# {r['label']} ({r['seconds']:.1f} s)")
        out.append(r["command"])
    out.append("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
