"""The model families Finch fine-tunes and serves, as one table: what differs between them.

A family is recognised by its chat template (the one thing every artifact carries: a tokenizer, an
adapter folder, a GGUF), by a marker only its template writes. What the table says:
- `end_of_turn`: the token that ends an assistant reply. Training puts it in the reply's labels and
  every engine stops on it; it is not always the tokenizer's EOS (Gemma's EOS is `<eos>`, Phi-3.5's
  `<|endoftext|>`).
- `pad`: pad tokens to use when the tokenizer's pad is the end-of-turn token (or missing), first one
  the vocabulary has, so padding never stands in for the token that teaches the model to stop.
- `system_role`: "native" (the template renders a system turn) or "fold" (it has none: Gemma 2
  raises, Mistral v0.3 moves it to the last user turn, which changes earlier turns as a chat grows);
  "fold" puts the system prompt at the start of the first user message, as Gemma 3's own template does.
- `template_prelude`: Jinja set before the template at training time, so that the trained model's
  template renders the same with no extra arguments in every renderer (ours, llama.cpp's, vLLM's):
  Qwen3 and SmolLM3 are trained and served without thinking (an empty think block in the prompt).
- `lora_target_modules`: the projections LoRA wraps (Phi-3 fuses q/k/v and gate/up).
- `strips_after_end_of_turn`: the end-of-turn token eats the whitespace after it when a text is
  tokenized (Phi-3: `rstrip` in its tokenizer.json, and llama.cpp's rule for Phi-3). The cut after a
  reply then goes after that whitespace, so a reply tokenized alone gives the ids the whole prompt
  gives tokenized at once (an inference server rendering the template itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NO_THINKING = "{%- set enable_thinking = false -%}\n"
FOLD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Family:
    """What Finch needs to know about one model family (see the module docstring)."""

    name: str
    markers: tuple[str, ...]  # all of them in a template -> this family (the table is checked in order)
    architecture: str  # transformers class of its models
    end_of_turn: str
    pad: tuple[str, ...]
    recipe: str  # training/recipes/<recipe>
    system_role: str = "native"
    template_prelude: str = ""
    lora_target_modules: tuple[str, ...] = ALL_PROJECTIONS
    strips_after_end_of_turn: bool = False
    quirks: str = ""  # what the README's family table says


FAMILIES = (
    Family(
        "llama3",
        ("<|start_header_id|>",),
        "LlamaForCausalLM",
        "<|eot_id|>",
        ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"),
        "llama32-1b-finetome-qlora.yaml",
        quirks="header tokens around each role; a date line in the system turn",
    ),
    Family(
        "gemma2",
        ("<start_of_turn>",),
        "Gemma2ForCausalLM",
        "<end_of_turn>",
        ("<pad>",),
        "gemma2-2b-it-qlora.yaml",
        system_role="fold",
        quirks="role `model` for the assistant; no system role (its template raises): the system prompt "
        "is folded into the first user message; content is trimmed",
    ),
    Family(
        "phi3.5",
        ("<|assistant|>", "<|end|>"),
        "Phi3ForCausalLM",
        "<|end|>",
        ("<|endoftext|>", "<unk>"),
        "phi35-mini-qlora.yaml",
        lora_target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        strips_after_end_of_turn=True,
        quirks="fused `qkv_proj` and `gate_up_proj`; turns end with `<|end|>`, the conversation with "
        "`<|endoftext|>` (not trained); its control tokens eat the newline after them",
    ),
    Family(
        "mistral",
        ("[INST]",),
        "MistralForCausalLM",
        "</s>",
        ("<unk>",),
        "mistral-7b-v03-qlora.yaml",
        system_role="fold",
        quirks="no system turn (its template moves the system prompt into the last user message, which "
        "changes earlier turns as a chat grows): folded into the first user message; no pad token",
    ),
    Family(
        "smollm3",
        ("<|im_start|>", "Reasoning Mode"),
        "SmolLM3ForCausalLM",
        "<|im_end|>",
        ("<|finetune_right_pad_id|>", "<|end_of_text|>"),
        "smollm3-3b-qlora.yaml",
        template_prelude=NO_THINKING,
        quirks="a metadata header in the system turn (not trained); trained and served in /no_think mode "
        "(an empty think block opens each reply, in the prompt)",
    ),
    Family(
        "qwen3",
        ("<|im_start|>", "enable_thinking"),
        "Qwen3ForCausalLM",
        "<|im_end|>",
        ("<|endoftext|>",),
        "qwen3-1.7b-qlora.yaml",
        template_prelude=NO_THINKING,
        quirks="trained and served without thinking: the empty think block is part of the prompt, and "
        "earlier replies in a chat are rendered without it",
    ),
    Family(
        "qwen2.5",
        ("<|im_start|>", "You are Qwen"),
        "Qwen2ForCausalLM",
        "<|im_end|>",
        ("<|endoftext|>",),
        "qwen25-1.5b-qlora.yaml",
        quirks='a default system prompt ("You are Qwen...") when none is given (not trained)',
    ),
    Family(
        "smollm2",
        ("<|im_start|>",),
        "LlamaForCausalLM",
        "<|im_end|>",
        ("<|endoftext|>",),
        "cpu-smollm2-sample.yaml",
        quirks="ChatML; pad == EOS == `<|im_end|>` in the tokenizer as shipped",
    ),
)
BY_NAME = {family.name: family for family in FAMILIES}


class SystemRoleError(ValueError):
    """A system prompt where the family's template cannot place one."""


def family_of(template: str | None) -> Family | None:
    """The family whose markers are all in this chat template; None for one Finch does not know."""
    if not template:
        return None
    return next((family for family in FAMILIES if all(marker in template for marker in family.markers)), None)


def end_of_turn(template: str | None) -> str | None:
    """The token that ends an assistant reply in this template's family (None: use the EOS)."""
    family = family_of(template)
    return family.end_of_turn if family else None


def strips_after_end_of_turn(template: str | None) -> bool:
    """Whether this template's end-of-turn token eats the whitespace after it (see the module docstring)."""
    family = family_of(template)
    return bool(family and family.strips_after_end_of_turn)


def system_role(template: str | None) -> str:
    """ "native" or "fold": how this template's family takes a system prompt."""
    family = family_of(template)
    return family.system_role if family else "native"


def system_note(role: str) -> str:
    """One line for a page: how a system prompt reaches the model."""
    if role == "fold":
        return (
            "This model's chat template has no system role: the system prompt is put at the start of the "
            "first user message."
        )
    return "The system prompt is sent as the system turn of the model's chat template."


def fold_system(messages: Sequence[dict], role: str) -> list[dict]:
    """Messages as the family takes them: with role "fold", a leading system message becomes the
    start of the first user message (a system message anywhere else is refused, with what to do)."""
    messages = list(messages)
    if role != "fold":
        return messages
    if any(m["role"] == "system" for m in messages[1:]):
        raise SystemRoleError(
            "this model's chat template has no system role: give the system prompt only as the "
            "first message, and it is put at the start of the first user message"
        )
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if not rest or rest[0]["role"] != "user":
        raise SystemRoleError(
            "this model's chat template has no system role, and the system prompt is folded into "
            "the first user message: start the conversation with a user message"
        )
    first = rest[0]["content"]
    return [{**rest[0], "content": f"{system}{FOLD_SEPARATOR}{first}" if system else first}, *rest[1:]]


def training_template(template: str) -> str:
    """The template a fine-tune of this family is trained with and ships (its prelude set once)."""
    family = family_of(template)
    if family and family.template_prelude and not template.startswith(family.template_prelude):
        return family.template_prelude + template
    return template


def pad_token(template: str | None, vocabulary: dict[str, int], current: str | None) -> str | None:
    """The pad token for training: the tokenizer's own unless it is the end-of-turn token (or none),
    then the family's first pad candidate the vocabulary has (None: keep the current one)."""
    family = family_of(template)
    if family is None or (current and current != family.end_of_turn):
        return current
    return next((token for token in family.pad if token in vocabulary), current)
