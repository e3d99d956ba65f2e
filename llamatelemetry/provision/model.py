"""Write a tiny, deterministic "scripted" reasoning model as a GGUF file.

The model is a llama-architecture network whose output is known token by token, so tests
(and the demo) can assert exact content, exact reasoning text and exact token counts
against a *real* llama-server.

How it works: ``n_embd`` is at least the vocabulary size, the embedding of token ``i`` is
the one-hot vector ``e_i``, every attention and feed-forward weight is zero (so the
residual stream still holds ``e_i`` after every layer), and the output matrix has a single
large weight at ``[next(i), i]``. The model therefore always emits ``next(last token)``:

* after the generation prompt ``<|im_start|>assistant\\n<think>\\n`` it "thinks"
  :data:`REASONING_PIECES` (20 tokens), then ``</think>``, ``\\n\\n``, then answers
  :data:`ANSWER_PIECES` (3 tokens) and ends with ``<|im_end|>``;
* with thinking switched off (``chat_template_kwargs={"enable_thinking": False}``) the
  prompt already ends in ``</think>\\n\\n`` and it answers straight away.

The file is about 6 MB, loads in milliseconds and generates in ~0.1 ms per token on a CPU.

Example::

    from llamatelemetry.provision.model import write_scripted_model
    path = write_scripted_model("/tmp/scripted.gguf")
"""

from __future__ import annotations

import os
from pathlib import Path

#: Reasoning the model produces, one token per piece (all distinct: each token has one successor).
REASONING_PIECES: tuple[str, ...] = (
    "Okay", " the", " user", " wants", " a", " short", " greeting", ".", " I", " should",
    " keep", " it", " brief", " and", " friendly", ",", " then", " stop", " thinking", " now",
)
#: The visible answer, one token per piece.
ANSWER_PIECES: tuple[str, ...] = ("Hello", " there", "!")
REASONING_TEXT = "".join(REASONING_PIECES)
ANSWER_TEXT = "".join(ANSWER_PIECES)
#: Tokens generated for a full thinking answer: reasoning + </think> + "\n\n" + answer + <|im_end|>.
THINKING_COMPLETION_TOKENS = len(REASONING_PIECES) + 2 + len(ANSWER_PIECES) + 1

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Qwen3-style: renders past thinking as <think>...</think>, so llama-server detects the markers.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.role == 'assistant' and message.reasoning_content is defined and message.reasoning_content -%}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- if message.content is string -%}{{- message.content -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}"
    "{{- '<think>\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

_N_EMBD = 512
_N_HEAD = 4
_N_FF = 32
_N_CTX = 2048
_LOGIT_SCALE = 8.0


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _encode(text: str, table: dict[int, str]) -> str:
    return "".join(table[b] for b in text.encode("utf-8"))


def _build_vocab() -> tuple[list[str], list[int], list[str], dict[str, int]]:
    import gguf

    table = _byte_to_unicode()
    tokens: list[str] = list(SPECIAL_TOKENS)
    types = [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    tokens += [table[b] for b in range(256)]
    types += [gguf.TokenType.NORMAL] * 256
    index = {t: i for i, t in enumerate(tokens)}
    merges: list[str] = []

    def add_word(encoded: str) -> None:
        # Build the word left to right (prefix + next char) so BPE reproduces exactly this token.
        for end in range(2, len(encoded) + 1):
            piece = encoded[:end]
            if piece not in index:
                index[piece] = len(tokens)
                tokens.append(piece)
                types.append(gguf.TokenType.NORMAL)
                merges.append(f"{encoded[:end - 1]} {encoded[end - 1]}")

    for piece in (*REASONING_PIECES, *ANSWER_PIECES, "\n\n"):
        add_word(_encode(piece, table))
    return tokens, [int(t) for t in types], merges, index


def write_scripted_model(path: str | os.PathLike[str]) -> Path:
    """Write the scripted reasoning model to ``path`` (GGUF, f32) and return the path."""
    import gguf
    import numpy as np

    table = _byte_to_unicode()
    tokens, types, merges, index = _build_vocab()
    n_vocab = len(tokens)
    assert n_vocab <= _N_EMBD, "n_embd must be >= vocabulary size for one-hot embeddings"

    def tok(text: str) -> int:
        return index[_encode(text, table)]

    newline, double_newline = tok("\n"), tok("\n\n")
    chain = [newline, *(tok(p) for p in REASONING_PIECES), index["</think>"], double_newline,
             *(tok(p) for p in ANSWER_PIECES), index["<|im_end|>"]]
    successor = {a: b for a, b in zip(chain, chain[1:])}

    embd = np.zeros((n_vocab, _N_EMBD), dtype=np.float32)
    embd[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    output = np.zeros((n_vocab, _N_EMBD), dtype=np.float32)
    for i in range(n_vocab):
        # Any token outside the script leads into it via "\n", so raw completions are scripted too.
        output[successor.get(i, newline), i] = _LOGIT_SCALE

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("llamatelemetry-scripted-reasoner")
    writer.add_context_length(_N_CTX)
    writer.add_embedding_length(_N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(_N_FF)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD)
    writer.add_rope_dimension_count(_N_EMBD // _N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(index["<|endoftext|>"])
    writer.add_eos_token_id(index["<|im_end|>"])
    writer.add_pad_token_id(index["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    zeros = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    ones = np.ones(_N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", zeros(_N_EMBD, _N_EMBD))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", zeros(_N_FF, _N_EMBD))
    writer.add_tensor("blk.0.ffn_up.weight", zeros(_N_FF, _N_EMBD))
    writer.add_tensor("blk.0.ffn_down.weight", zeros(_N_EMBD, _N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)  # atomic: concurrent test workers never see a half-written model
    return path


if __name__ == "__main__":
    import sys

    print(write_scripted_model(sys.argv[1] if len(sys.argv) > 1 else "scripted.gguf"))


def write_zero_lora(path: str | os.PathLike[str]) -> Path:
    """Write a rank-1 LoRA adapter for the scripted model whose weights are zero.

    It loads and behaves like a real adapter (listed by ``/lora-adapters``, scale adjustable)
    without changing the scripted output, so tests can exercise the LoRA endpoints.
    """
    import gguf
    import numpy as np

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 1.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((1, _N_EMBD), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((_N_EMBD, 1), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
