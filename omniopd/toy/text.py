"""Tokenizers and the chat format of the toy world.

A conversation ``[{"role": "user", "content": prompt}]`` renders, with the generation prompt, as
``<|user|>Q: 37+48*2=?<|assistant|>``; the assistant's answer follows directly and ends with
``<|eos|>``. Role markers are special tokens, so the prefix tokenises the same whether or not an
answer follows it (the trainer and the gateway's ``hf`` provider rely on that).

Two tokenizers, both trained or built here with ``tokenizers`` and wrapped as
``PreTrainedTokenizerFast``:

- ``bpe``: byte-level BPE with every digit its own token (digits split individually, as in LLaMA
  and PaLM, so the models see carries digit by digit), merges learnt on the rest of the text;
- ``char``: one token per character (printable ASCII; other characters fall back to bytes), no
  merges, specials last. Its vocabulary, ids and segmentation differ from ``bpe``'s, so a teacher
  using it cannot serve white-box OPD.

Both round-trip any text exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROLES = ("system", "user", "assistant")
EOS = "<|eos|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, EOS, *(f"<|{role}|>" for role in ROLES)]

# Jinja, as Hugging Face chat templates are. Unknown roles are an error, not silently dropped.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '" + EOS + "' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _byte_level() -> tuple[pre_tokenizers.PreTokenizer, decoders.Decoder]:
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return pre, decoders.ByteLevel()


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[2:],
        model_max_length=max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """Byte-level BPE learnt on ``texts``, digits kept one per token.

    The vocabulary is the special tokens, the 256 byte symbols and merges up to ``vocab_size``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = _byte_level()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, max_length)


def char_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """One token per character: printable ASCII, newline and tab, then the 256 byte-fallback
    tokens ``<0x00>``..``<0xFF>`` for any other character (as in LLaMA's tokenizer), then the
    specials. No merges, no pre-tokenizer: a space is a token of its own."""
    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
    fallback = [f"<0x{i:02X}>" for i in range(256)]
    vocab = {token: i for i, token in enumerate([*chars, *fallback, *SPECIAL_TOKENS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tok, max_length)


def render_prefix(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """The text a model continues to answer ``prompt``: the chat template with the generation
    prompt for one user message."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
