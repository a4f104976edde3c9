"""The merged model as a shipped artifact: a LoRA adapter merged into its base in 16-bit, saved as a
plain Hugging Face folder (safetensors, tokenizer, chat template, the run's recipe, a card). It loads
in plain transformers and in an inference server (vLLM and TGI take such a folder or its Hub repo),
with no peft. The folder appears whole or not at all; the card holds the fidelity check of the merge
(the adapter's greedy replies against the merged folder's, gguf/verify.py's merged hop)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from chat_runtime.spec import require_safetensors

from .errors import ExportError
from .files import check_free_space
from .merge import MERGE_DTYPES, merge_adapter, resolve_adapter

RUN_FILES = ("recipe.yaml", "metrics.json")  # a Finch run's settings and results travel with its merge

CARD = """# {name}

The LoRA adapter `{adapter}` merged into `{base}` ({dtype}), saved as a whole model by Finch's
`gguf/export.py --merged_dir`: safetensors weights, the tokenizer and the chat template the adapter was
trained with. No peft needed.

## Use it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```

- Finch's chatbot: `FINCH_MODEL={repo} python chatbot_app/app.py`
- vLLM: `vllm serve {repo}`; TGI: `--model-id {repo}` (both apply the chat template it carries)
- llama.cpp: `python gguf/export.py --model {repo} --quant q4_k_m`

{recipe}{fidelity}"""


def write_merged(
    adapter: str,
    model: str | None,
    merged_dir: Path,
    dtype_name: str = "float16",
    repo_id: str | None = None,
    verify: bool = True,
) -> Path:
    """Merge `adapter` into its base (or `model`) and write the folder `merged_dir`, whole or not at all."""
    if dtype_name not in MERGE_DTYPES:
        raise ExportError(f"unknown --merge_dtype {dtype_name!r}: choose from {', '.join(MERGE_DTYPES)}")
    merged_dir = merged_dir.expanduser().resolve()
    if merged_dir.exists() and any(merged_dir.iterdir()):
        raise ExportError(f"{merged_dir} already holds files: choose another --merged_dir, or remove it first")
    adapter_dir, base_dir, base = resolve_adapter(adapter, model)  # refuses adapters that cannot merge
    try:
        require_safetensors(str(base_dir), "the base model")
        require_safetensors(str(adapter_dir), "the adapter")
    except ValueError as err:
        raise ExportError(str(err)) from None
    merged_dir.parent.mkdir(parents=True, exist_ok=True)
    params = sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))  # about 16-bit size or more
    check_free_space(merged_dir.parent, params)
    tmp = Path(tempfile.mkdtemp(prefix=f".{merged_dir.name}-", dir=merged_dir.parent))
    try:
        merge_adapter(base_dir, adapter_dir, tmp, dtype_name)
        for name in RUN_FILES:
            if (adapter_dir / name).is_file():
                shutil.copyfile(adapter_dir / name, tmp / name)
        fidelity = ""
        if verify:
            from .verify import verify_adapter

            report = verify_adapter(adapter_dir, {}, model=str(base_dir), merged=tmp, work_dir=merged_dir.parent)
            (tmp / "fidelity.json").write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
            fidelity = report.markdown()
        card(base, adapter, dtype_name, repo_id or f"you/{merged_dir.name}", tmp, fidelity).save(tmp / "README.md")
        if merged_dir.exists():
            merged_dir.rmdir()  # empty (checked above)
        os.replace(tmp, merged_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged_dir


def _display(source: str) -> str:
    """A Hub id as is; a local folder by its name only (a card must not carry this machine's paths)."""
    path = Path(source).expanduser()
    if not path.exists():
        return source
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


def card(base: str, adapter: str, dtype_name: str, repo: str, folder: Path, fidelity: str):
    """A huggingface_hub ModelCard for the merged folder."""
    from huggingface_hub import ModelCard, ModelCardData

    on_hub = not Path(base).expanduser().exists()
    data = ModelCardData(
        base_model=base if on_hub else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["finch", "merged", "conversational"],
    )
    recipe = (
        "## How it was trained\n\nThe run's settings are in `recipe.yaml`, its results in `metrics.json`.\n\n"
        if (folder / "recipe.yaml").is_file()
        else ""
    )
    body = CARD.format(
        name=repo.split("/")[-1],
        adapter=_display(adapter),
        base=_display(base),
        dtype=dtype_name,
        repo=repo,
        recipe=recipe,
        fidelity=fidelity,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
