"""Reference tokenizers for tests/core/test_tokenizer.cpp, built with Hugging Face `tokenizers`.

  train DIR                         trains one tokenizer per style on text Debian ships and writes
                                    DIR/<style>/tokenizer.json (and tokenizer_config.json)
  encode TOKENIZER TEXTS OUT        TEXTS: a JSON list of strings; writes OUT: a JSON list of
                                    {"ids": [...], "decoded": "..."} from tokenizers itself
                                    (encode with add_special_tokens=False, decode keeping specials)

Styles (each with added special tokens, and non-special added tokens where the style uses them):
  gpt2         byte-level BPE, ByteLevel pre-tokenizer with the GPT-2 pattern
  llama3       Split with the Llama 3 pattern + ByteLevel(use_regex false), ignore_merges,
               merges rewritten to the "a b" string form
  qwen2        NFC normalizer, Split with the Qwen2 pattern + ByteLevel(use_regex false)
  sp           SentencePiece-style BPE as Llama 2 / Mistral / TinyLlama ship it: normalizer
               Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte fallback with <0xNN>
               tokens, unk fused, decoder Replace/ByteFallback/Fuse/Strip
  sp_metaspace the same model with a Metaspace(prepend_scheme first, split false) pre-tokenizer
               and no normalizer, as newer conversions of the same models ship it
  mixed        NFKC + Lowercase + Strip normalizer, Digits / Split(String) / Metaspace(always)
               pre-tokenizers, Metaspace decoder, normalized added tokens with lstrip, rstrip and
               single_word
  gpt2_prefix  the gpt2 model with NFD + StripAccents + Replace(Regex) normalizers and ByteLevel
               with add_prefix_space (RoBERTa style)
  sp_never     the sp model with Metaspace(prepend_scheme never, split true) and a Metaspace decoder
"""
import glob
import gzip
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import AddedToken

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    """English licenses and fortunes, plus translated manual pages (Cyrillic, CJK, accents)."""
    texts = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    for name in ["computers", "science"]:
        path = "/usr/share/games/fortunes/" + name
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    for lang in ["ru", "uk", "ja", "ko", "zh_CN", "de", "fr", "es", "pl", "cs"]:
        for path in sorted(glob.glob(f"/usr/share/man/{lang}/man*/*.gz"))[:6]:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    if not texts:
        sys.exit("no training text found under /usr/share")
    lines = []
    for t in texts:
        lines.extend(t.splitlines(keepends=True))
    return lines


def save(tok, out_dir, config=None, edit=None):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    if edit is not None:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        edit(data)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        Tokenizer.from_file(path)  # tokenizers itself must accept the edited file
    if config is not None:
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False)


def byte_level(lines, vocab_size, specials, pre, normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def add_byte_tokens(data):
    """SentencePiece BPE vocabularies hold <0x00>..<0xFF>; give them ids after the others."""
    vocab = data["model"]["vocab"]
    next_id = max(max(vocab.values()), max(t["id"] for t in data["added_tokens"])) + 1
    for b in range(256):
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1


def train(out):
    lines = corpus()

    tok = byte_level(lines, 3000, ["<|endoftext|>"], pre_tokenizers.ByteLevel(add_prefix_space=False))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<tool>", rstrip=True, normalized=False),
                    AddedToken(" hello world", normalized=False)])
    save(tok, os.path.join(out, "gpt2"),
         {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False})

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = byte_level(lines, 4000, specials, pre)

    def llama3_edit(data):
        data["model"]["ignore_merges"] = True
        data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                     "ids": [data["model"]["vocab"]["<|begin_of_text|>"]],
                                                     "tokens": ["<|begin_of_text|>"]}}}
    save(tok, os.path.join(out, "llama3"),
         {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, llama3_edit)

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), "isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = byte_level(lines, 4000, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], pre, normalizers.NFC())
    save(tok, os.path.join(out, "qwen2"),
         {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})

    # SentencePiece style: trained without line breaks (they become the byte token <0x0A>, as in
    # Llama 2) and with a Metaspace split (no merge crosses a word start, as in SentencePiece), then
    # given the pipelines the model families ship.
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "removed"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(lines, trainer)

    def sp_edit(data):
        add_byte_tokens(data)
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        data["pre_tokenizer"] = None
        data["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    save(tok, os.path.join(out, "sp"),
         {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
          "add_eos_token": False}, sp_edit)

    def sp_metaspace_edit(data):
        add_byte_tokens(data)
        data["normalizer"] = None
        data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                 "split": False}
        data["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    save(tok, os.path.join(out, "sp_metaspace"),
         {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}, sp_metaspace_edit)

    def gpt2_prefix_edit(data):
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "NFD"}, {"type": "StripAccents"},
            {"type": "Replace", "pattern": {"Regex": "[0-9]{4,}"}, "content": "<num>"}]}
        data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                 "use_regex": True}
    save(Tokenizer.from_file(os.path.join(out, "gpt2", "tokenizer.json")), os.path.join(out, "gpt2_prefix"),
         None, gpt2_prefix_edit)

    def sp_never_edit(data):
        data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never",
                                 "split": True}
        data["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}
    save(Tokenizer.from_file(os.path.join(out, "sp_metaspace", "tokenizer.json")), os.path.join(out, "sp_never"),
         None, sp_never_edit)

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split("-", "merged_with_next"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=2500, special_tokens=["[UNK]", "[CLS]"],
                                  limit_alphabet=200, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.add_tokens([AddedToken("Mask", single_word=True, normalized=True),
                    AddedToken("<sep>", lstrip=True, rstrip=True, normalized=True)])
    save(tok, os.path.join(out, "mixed"), {"bos_token": "[CLS]", "eos_token": None})


def encode(tokenizer_path, texts_path, out_path):
    tok = Tokenizer.from_file(tokenizer_path)
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    result = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        result.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if len(sys.argv) == 3 and sys.argv[1] == "train":
        train(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
