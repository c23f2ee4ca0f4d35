"""The demo world's character-level tokenizer, built with `tokenizers` and wrapped for transformers.

Every character is one token, so arithmetic strings tokenize the same way wherever they appear
(a BPE merge such as ``"71"`` would hide the digits from a model this small). Special tokens
are matched whole before the character split, so ``"<|user|>"`` stays one token.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT, END]
"""In id order: ``<pad>`` is 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the chat markers."""

CHARACTERS = string.digits + "+-*=" + " " + string.ascii_letters + ".,:;!?'\"()/%_#&@<>|[]{}\n"
"""Every ordinary token, one character each; anything else encodes as ``<unk>``."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% else %}{{ raise_exception('role must be user, assistant or system, got '"
    " + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""``<bos>[system\\n]<|user|>23+48=<|end|><|assistant|>71<|end|>``: a turn ends with ``<|end|>``,
which the demo model's generation config treats as a stop token alongside ``<eos>``."""


def _vocabulary() -> dict[str, int]:
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for character in CHARACTERS:
        vocab.setdefault(character, len(vocab))
    return vocab


def build_raw_tokenizer() -> Tokenizer:
    """The `tokenizers` object: one token per character, ``<bos>`` prepended on encode."""
    vocab = _vocabulary()
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] rather than "." so newlines are single tokens too.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    # Fuse joins the pieces back without the spaces WordLevel would put between them.
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The demo tokenizer as transformers sees it; `save_pretrained` / `AutoTokenizer` round-trip.

    Padding defaults to the right (training); callers that batch `generate` set
    ``padding_side = "left"`` on their copy.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=build_raw_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
        padding_side="right",
    )
