"""Chat-template rendering by Hugging Face transformers, the reference for tests/trainer/test_data.cpp.

    chat_reference.py TOKENIZER_DIR chatml|llama3 EXAMPLES.jsonl OUT.json [--generation-prompt]

For each JSONL example ({"messages": [...]} or {"prompt", "completion"}, the latter as a user and
an assistant message) writes {"text", "ids", "mask"} to OUT.json: the text apply_chat_template
renders with the model family's own Jinja template (Qwen2-Instruct's for chatml, Llama-3-Instruct's
for llama3, written here into the tokenizer's chat_template as a tokenizer_config.json would hold
it), its ids (tokenized without added BOS/EOS, as apply_chat_template does), and per id whether
it is an assistant token (return_assistant_tokens_mask, from a copy of the template that marks the
assistant content and its end-of-turn token with {% generation %} and renders the same text).
With --generation-prompt it writes {"text", "ids"} of what a chat front end sends a model: each
example's first user message alone, rendered with add_generation_prompt=True.
"""
import json
import os
import sys

from transformers import PreTrainedTokenizerFast

TEMPLATES = {
    # Qwen/Qwen2-7B-Instruct tokenizer_config.json
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{% endif %}"),
}

MASKED = {
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endif %}{% endfor %}"),
    "llama3": (
        "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"),
}


def main():
    tok_dir, name, jsonl, out = sys.argv[1:5]
    generation = len(sys.argv) > 5 and sys.argv[5] == "--generation-prompt"
    with open(os.path.join(tok_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"),
                                  bos_token=cfg.get("bos_token"), eos_token=cfg.get("eos_token"),
                                  chat_template=TEMPLATES[name])
    results = []
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            ex = json.loads(line)
            if "messages" in ex:
                messages = ex["messages"]
            else:
                messages = [{"role": "user", "content": ex["prompt"]},
                            {"role": "assistant", "content": ex["completion"]}]
            if generation:
                user = [m for m in messages if m["role"] == "user"][:1]
                text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
                results.append({"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]})
                continue
            text = tok.apply_chat_template(messages, tokenize=False)
            masked_text = tok.apply_chat_template(messages, chat_template=MASKED[name], tokenize=False)
            assert masked_text == text, (masked_text, text)
            enc = tok.apply_chat_template(messages, chat_template=MASKED[name], tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert ids == enc["input_ids"], "apply_chat_template tokenized differently"
            results.append({"text": text, "ids": ids, "mask": enc["assistant_masks"]})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
