"""LLaMA-Factory's ``llama3`` chat template: how the seed's SFT rows were tokenized and its model was served.

The seed fine-tuned with ``llamafactory-cli train ... template: llama3`` and exported (merged, quantized) with
the same template. Its definition (``src/llamafactory/data/template.py`` of hiyouga/LLaMA-Factory, 2024 releases):

    format_prefix    [{"bos_token"}]
    format_user      "<|start_header_id|>user<|end_header_id|>\\n\\n{{content}}<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\\n\\n"
    format_assistant "{{content}}" + eos, with eos replaced by "<|eot_id|>" (stop_words, replace_eos=True)
    format_system    "<|start_header_id|>system<|end_header_id|>\\n\\n{{content}}<|eot_id|>", no default system

``Template.encode_oneturn`` tokenizes each slot with ``add_special_tokens=False`` and the texts as they are.
Two differences from Llama 3.1's own chat template (``model`` in the stages): no system turn (3.1's template
adds "Cutting Knowledge Date: ... Today Date: ..." to every conversation) and no ``| trim`` (the seed_v1
prompt ends in "\\n" + 8 spaces, which the model's template strips and this one keeps).

LLaMA-Factory's export writes the template into the saved tokenizer as a jinja chat template
(``Template.fix_jinja_template`` / ``_get_jinja_template``); ``JINJA`` is that string for ``llama3``, so a
merged or quantized model answers, through any chat API (transformers, vLLM offline or server), in the
format it was trained in. Stage 23 installs it; ``tests/test_logic_seed_switches.py`` checks that rendering
it and tokenizing gives exactly the training prompt ids.
"""
from __future__ import annotations

from typing import Any

NAME = "llama3_factory"
USER_HEAD = "<|start_header_id|>user<|end_header_id|>\n\n"
USER_TAIL = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
EOT = "<|eot_id|>"
SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT)

# _get_jinja_template(llama3): prefix = the bos token as a literal, system turn only when one is given,
# user = the whole user slot (it already opens the assistant header), assistant = content + eot.
JINJA = (
    "{{ '<|begin_of_text|>' }}"
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% if system_message is defined %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system_message + '<|eot_id|>' }}{% endif %}"
    "{% for message in loop_messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|start_header_id|>user<|end_header_id|>\n\n' + content + "
    "'<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ content + '<|eot_id|>' }}{% endif %}{% endfor %}"
)


def check_tokenizer(tok: Any) -> None:
    """The template needs Llama 3's special tokens as single tokens; say so plainly when they are missing."""
    missing = [t for t in SPECIALS if t not in tok.get_vocab()]
    if tok.bos_token != "<|begin_of_text|>":
        missing.append(f"bos_token <|begin_of_text|> (it is {tok.bos_token!r})")
    if missing:
        raise ValueError(f"template={NAME} needs the Llama 3 special tokens; this tokenizer lacks "
                         f"{', '.join(missing)} (use template=model for other families)")


def encode_oneturn(tok: Any, user: str, response: str) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` exactly as LLaMA-Factory's ``encode_oneturn`` for one user/assistant pair:
    ``[bos] + user slot`` and ``response + [<|eot_id|>]``, each piece tokenized without special tokens."""
    check_tokenizer(tok)
    # concatenation, not str.format: the texts contain braces
    prompt = [tok.bos_token_id] + tok.encode(USER_HEAD + user + USER_TAIL, add_special_tokens=False)
    return prompt, tok.encode(response, add_special_tokens=False) + [tok.convert_tokens_to_ids(EOT)]
