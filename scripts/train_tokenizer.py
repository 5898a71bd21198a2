#!/usr/bin/env python3
"""Trains a byte-level BPE tokenizer with Hugging Face `tokenizers` and writes it as a model
directory's tokenizer files (run with the project's .venv: .venv/bin/python).

    train_tokenizer.py OUT_DIR TEXT_FILE... [--vocab 2048]

OUT_DIR/tokenizer.json: GPT-2 style byte-level BPE (ByteLevel pre-tokenizer and decoder) with the
special tokens <|endoftext|> (EOS), <|im_start|> and <|im_end|> (for data.template chatml);
OUT_DIR/tokenizer_config.json names the EOS token. Deterministic for the same text.
"""
import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("texts", nargs="+")
    ap.add_argument("--vocab", type=int, default=2048)
    a = ap.parse_args()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(a.texts, trainer)
    os.makedirs(a.out_dir, exist_ok=True)
    tok.save(os.path.join(a.out_dir, "tokenizer.json"))
    with open(os.path.join(a.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "add_bos_token": False}, f, indent=2)
    print(f"train_tokenizer: {tok.get_vocab_size()} tokens in {a.out_dir}/tokenizer.json")


if __name__ == "__main__":
    main()
