"""The model card (README.md) and the Ollama Modelfile written beside the GGUF files.

Ollama speaks Go templates, not Jinja, so the Modelfile's TEMPLATE comes from a small table of
chat-template families, recognised by their markers in the model's own (Jinja) template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chat_runtime.families import end_of_turn
from chat_runtime.templating import render

from .files import human_size
from .pipeline import Export
from .quants import QUANTS


@dataclass(frozen=True)
class Family:
    name: str
    marker: str  # a string only this family's Jinja template contains
    ollama_template: str
    stop: tuple[str, ...]  # end-of-turn tokens


FAMILIES = (
    Family(
        "chatml",
        "<|im_start|>",
        (
            "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{- end }}'
            "<|im_start|>assistant\n"
        ),
        ("<|im_end|>",),
    ),
    Family(
        "llama3",
        "<|start_header_id|>",
        (
            "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
            '{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
            "{{ .Content }}<|eot_id|>{{ end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        ("<|eot_id|>",),
    ),
)


def family_of(template: str | None) -> Family | None:
    """The template's family (chatml, llama3), or None when we have no Ollama template for it."""
    return next((f for f in FAMILIES if template and f.marker in template), None)


def default_system_prompt(template: str | None, special_tokens: dict[str, str]) -> str | None:
    """The system prompt a template inserts when the chat has none (SmolLM2's does), found by rendering."""
    if not template:
        return None
    user = [{"role": "user", "content": "\x00U"}]
    sentinel = "\x00SYSTEM\x00"
    plain = render(template, user, add_generation_prompt=False, special_tokens=special_tokens)
    with_system = render(
        template,
        [{"role": "system", "content": sentinel}, *user],
        add_generation_prompt=False,
        special_tokens=special_tokens,
    )
    if sentinel not in with_system:
        return None
    head, tail = with_system.split(sentinel, 1)
    if plain.startswith(head) and plain.endswith(tail) and len(plain) > len(head) + len(tail):
        return plain[len(head) : len(plain) - len(tail)]
    return None


def modelfile(result: Export, gguf_name: str) -> str:
    """An Ollama Modelfile for `gguf_name`, with the chat format and stop tokens of the model."""
    family = family_of(result.chat_template)
    specials = {"eos_token": result.eos_token or ""}
    lines = [f"# Ollama: ollama create {result.name} -f Modelfile && ollama run {result.name}", f"FROM ./{gguf_name}"]
    if family:
        lines.append(f'TEMPLATE """{family.ollama_template}"""')
        system = default_system_prompt(result.chat_template, specials)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    else:
        lines.append(
            "# No TEMPLATE: Ollama reads the chat template from the GGUF's metadata (tokenizer.chat_template)."
        )
    stops = dict.fromkeys(
        [*(family.stop if family else ()), *filter(None, [end_of_turn(result.chat_template), result.eos_token])]
    )
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def _files_table(result: Export) -> str:
    rows = ["| file | quantization | bits/weight | size | quality |", "|---|---|---|---|---|"]
    for a in result.artifacts:
        if a.kind == "lora":
            rows.append(
                f"| `{a.path.name}` | LoRA adapter (f16) | - | {human_size(a.size)} | "
                f"the fine-tune alone: load it beside a GGUF of `{_display(result.base)}` |"
            )
        else:
            q = QUANTS[a.kind]
            note = q.quality + (f"; here {a.note}" if a.note else "")
            rows.append(f"| `{a.path.name}` | {q.name.upper()} | {q.bpw:g} | {human_size(a.size)} | {note} |")
    return "\n".join(rows)


def _how_to_run(result: Export, repo_id: str | None) -> str:
    """Commands for Finch's chat, llama.cpp and Ollama: from the Hub repo, or from this folder."""
    models = [a for a in result.artifacts if a.kind != "lora"]
    first = models[0].path.name if models else "MODEL.gguf"
    tag = models[0].kind.upper() if models else "Q4_K_M"
    source = f"{repo_id}/{first}" if repo_id else first
    llama = (
        f"llama-cli -hf {repo_id}:{tag}          # or, downloaded: llama-cli -m {first}\n"
        f"llama-server -hf {repo_id}:{tag}       # OpenAI-compatible server on http://127.0.0.1:8080"
        if repo_id
        else f"llama-cli -m {first}\nllama-server -m {first}       # OpenAI-compatible server on http://127.0.0.1:8080"
    )
    ollama = (
        f"ollama run hf.co/{repo_id}:{tag}\n# or, in a folder holding the files: the Modelfile sets the chat format and stop tokens\n"
        if repo_id
        else "# in this folder: the Modelfile sets the chat format and stop tokens\n"
    )
    return f"""## Chat on your CPU (Finch)

```bash
python gguf/chat.py --gguf {source}
```

## llama.cpp

```bash
{llama}
```

## Ollama

```bash
{ollama}ollama create {result.name} -f Modelfile && ollama run {result.name}
```
"""


def _display(model: str | None) -> str:
    """A Hub id as is; a local folder by its name only (a card must not carry this machine's paths)."""
    if model and Path(model).expanduser().exists():
        return f"{Path(model).name} (a local folder)"
    return str(model)


def model_card(result: Export, repo_id: str | None, extra_sections: str = "") -> str:
    """README.md for the folder of GGUF files (and its Hub repo)."""
    from huggingface_hub import ModelCard, ModelCardData

    on_hub = result.base and not Path(result.base).expanduser().exists()
    data = ModelCardData(
        base_model=result.base if on_hub else None,
        library_name="gguf",
        pipeline_tag="text-generation",
        tags=["gguf", "llama.cpp", "finch", "conversational"],
    )
    base, adapter = _display(result.base), _display(result.adapter)
    made_from = f"LoRA adapter `{adapter}` merged into `{base}`" if result.adapter else f"`{base}`"
    lora = next((a for a in result.artifacts if a.kind == "lora"), None)
    lora_text = (
        f"\n`{lora.path.name}` holds the adapter alone. With Finch: `python gguf/chat.py --gguf <a GGUF of {base}> "
        f"--lora_gguf {lora.path.name}`; with llama.cpp: `llama-cli -m <base>.gguf --lora {lora.path.name}`.\n"
        if lora
        else ""
    )
    config = {
        "base_model": base,
        "adapter": adapter if result.adapter else None,
        "converter": result.converter,
        "chat_template_family": (family_of(result.chat_template) or Family("other", "", "", ())).name,
        "eos_token": result.eos_token,
        "files": [a.path.name for a in result.artifacts],
    }
    content = f"""---
{data.to_yaml()}
---

# {result.name} (GGUF)

{made_from}, converted with llama.cpp's own converter ({result.converter}) by Finch's
`gguf/export.py`. Each file carries the model's chat template and end-of-sequence token in its
metadata, so llama.cpp-based apps format chats as in training and stop where the model stops.

## Files

{_files_table(result)}
{lora_text}
{_how_to_run(result, repo_id)}
## How it was made

```json
{json.dumps(config, indent=2)}
```
{extra_sections}"""
    return str(ModelCard(content))


def write_card_and_modelfile(result: Export, folder: Path, repo_id: str | None, extra_sections: str = "") -> list[Path]:
    """Write README.md and Modelfile into `folder` (atomically, like the GGUF files)."""
    from .files import atomic_output

    models = [a for a in result.artifacts if a.kind != "lora"]
    written = []
    for file_name, text in (
        ("README.md", model_card(result, repo_id, extra_sections)),
        ("Modelfile", modelfile(result, models[0].path.name) if models else None),
    ):
        if text is None:
            continue
        with atomic_output(folder / file_name) as tmp:
            tmp.write_text(text)
        written.append(folder / file_name)
    return written
