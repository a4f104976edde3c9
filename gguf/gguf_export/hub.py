"""Upload the GGUF files, the model card and the Modelfile (or a merged model's folder) to a model
repo on the Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ExportError

log = logging.getLogger(__name__)


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push(folder: Path, files: list[Path], repo_id: str, private: bool, what: str = "GGUF files") -> str:
    """Create `repo_id` (if needed) and upload `files` from `folder`; return the repo's URL.

    The token comes from HF_TOKEN or `hf auth login` and is never printed: errors name the failure
    and the retry command, not the request.
    """
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise ExportError(
            "No Hugging Face token: set HF_TOKEN or run `hf auth login`, then export again with --push_to_hub."
        )
    names = [str(f.relative_to(folder)) for f in files]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        log.info("uploading %d files to %s", len(names), repo_id)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=names,
            commit_message=f"Upload {what} with Finch",
        )
    except Exception as err:  # network, auth, quota
        first = _redact(str(err).strip().splitlines()[0][:200] if str(err).strip() else "", token)
        include = " ".join(f"--include {n}" for n in names)
        raise ExportError(
            f"Uploading to {repo_id} failed: {type(err).__name__}: {first}. Check your network and that the token can "
            f"write to this namespace. The files are complete in {folder}; retry with "
            f"`hf upload {repo_id} {folder} . {include}`."
        ) from None
    return str(url)
