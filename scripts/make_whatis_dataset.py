#!/usr/bin/env python3
"""Builds an instruction-tuning dataset from the manual pages' whatis database (man-db).

    scripts/make_whatis_dataset.py OUT_DIR [--sections 1,8] [--val-every 10] [--style messages|prompt]

Every command documented in the given manual sections (`apropos -l -s SECTIONS .`, in the C
locale, so the English one-line descriptions) becomes one example: a question about the command
and its one-line description as the answer. Writes OUT_DIR/train.jsonl and OUT_DIR/val.jsonl (a
command goes to val when a hash of its name says so, about one in --val-every; the split does not
change when commands are added or removed) and prints the counts.

  --style messages   {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}   (default;
                     for data.template chatml or llama3)
  --style prompt     {"prompt": "...", "completion": "..."}   (for data.template none)

Example line (messages):
  {"messages": [{"role": "user", "content": "What does the command `ls` do?"},
                {"role": "assistant", "content": "`ls` (section 1): list directory contents."}]}
The same machine gives the same files (commands sorted by name).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

QUESTIONS = [
    "What does the command `{name}` do?",
    "What is `{name}` used for?",
    "Describe the `{name}` command in one line.",
    "Which tool is `{name}`?",
]
LINE = re.compile(r"^(?P<name>\S.*?) \((?P<section>[^)]+)\)\s+- (?P<desc>.+)$")


def whatis_entries(sections):
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", LANGUAGE="", MANWIDTH="1000")
    try:
        out = subprocess.run(["apropos", "-l", "-s", sections, "."], env=env, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"make_whatis_dataset: apropos failed ({e}); install man-db and run mandb")
    entries = {}
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        name, section, desc = m["name"].strip(), m["section"].strip(), " ".join(m["desc"].split())
        if not desc or name in entries:
            continue
        entries[name] = (section, desc)
    return sorted(entries.items())


def stable_hash(name):
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def example(name, section, desc, style):
    question = QUESTIONS[stable_hash(name) % len(QUESTIONS)].format(name=name)
    answer = f"`{name}` (section {section}): {desc.rstrip('.')}."
    if style == "prompt":
        return {"prompt": f"Question: {question}\nAnswer:", "completion": " " + answer}
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--sections", default="1,8")
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--style", choices=["messages", "prompt"], default="messages")
    a = ap.parse_args()
    if a.val_every < 2:
        sys.exit("make_whatis_dataset: --val-every must be at least 2")
    entries = whatis_entries(a.sections)
    if not entries:
        sys.exit("make_whatis_dataset: the whatis database lists no commands (run mandb)")
    os.makedirs(a.out_dir, exist_ok=True)
    counts = {"train": 0, "val": 0}
    with open(os.path.join(a.out_dir, "train.jsonl"), "w", encoding="utf-8") as train, \
         open(os.path.join(a.out_dir, "val.jsonl"), "w", encoding="utf-8") as val:
        for name, (section, desc) in entries:
            split = "val" if stable_hash("split:" + name) % a.val_every == 0 else "train"
            f = val if split == "val" else train
            f.write(json.dumps(example(name, section, desc, a.style), ensure_ascii=False) + "\n")
            counts[split] += 1
    print(f"make_whatis_dataset: {counts['train']} train and {counts['val']} val examples in {a.out_dir}")


if __name__ == "__main__":
    main()
