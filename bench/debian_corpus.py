"""Writes a text corpus of about N MB from text Debian ships, for the tokenizer benchmarks.

    debian_corpus.py OUT.txt --mb N

Concatenates, in sorted path order, the manual pages under /usr/share/man (every language, so the
text mixes English with German, French, Russian, Japanese, Chinese, ...; decompressed roff
source), then the text files under /usr/share/doc (READMEs, changelogs, copyright files), then the
licenses and fortunes, skipping anything that is not valid UTF-8, until N MB are written. The
same machine gives the same file.
"""
import argparse
import glob
import gzip
import os


def sources():
    yield from sorted(glob.glob("/usr/share/man/**/*.gz", recursive=True))
    yield from sorted(p for p in glob.glob("/usr/share/doc/**/*", recursive=True) if os.path.isfile(p))
    yield from sorted(glob.glob("/usr/share/common-licenses/*"))
    yield from sorted(p for p in glob.glob("/usr/share/games/fortunes/*") if "." not in os.path.basename(p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=10)
    a = ap.parse_args()
    limit = int(a.mb * 1e6)
    written = 0
    with open(a.out, "wb") as out:
        for path in sources():
            if written >= limit:
                break
            try:
                if path.endswith(".gz"):
                    with gzip.open(path, "rb") as f:
                        data = f.read()
                else:
                    with open(path, "rb") as f:
                        data = f.read()
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError, EOFError):
                continue
            if "\x00" in text:
                continue
            data = text.encode("utf-8")[: limit - written]
            # Cut at a line end so the file stays valid UTF-8.
            if written + len(data) >= limit:
                data = data[: data.rfind(b"\n") + 1]
            out.write(data)
            written += len(data)
    print(f"{a.out}: {written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
