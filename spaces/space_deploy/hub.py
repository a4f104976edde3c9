"""Create or update a Space on the Hub, upload a bundle, ask for hardware, set variables."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi

from chat_runtime.errors import UserError
from chat_runtime.hub import describe_error, hub_token

log = logging.getLogger(__name__)


def deploy(
    bundle: Path,
    space_id: str,
    hardware: str,
    variables: dict[str, str],
    private: bool,
    secrets: dict[str, str] | None = None,
) -> str:
    """Upload `bundle` to the Space `space_id` and configure it; return the Space's URL."""
    token = hub_token()
    api = HfApi(token=token)
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(bundle), repo_id=space_id, repo_type="space", commit_message="Deploy with Finch"
        )
        for key, value in variables.items():
            api.add_space_variable(space_id, key, value)
        for key, value in (secrets or {}).items():
            api.add_space_secret(space_id, key, value)
        if hardware:
            api.request_space_hardware(space_id, hardware)
    except Exception as err:  # network, auth, quota: say what failed without echoing request headers
        reason = describe_error(err, token)
        for value in (secrets or {}).values():
            reason = reason.replace(value, "***")
        raise UserError(
            f"Deploying to {space_id} failed: {reason}. "
            "Check your network, that the token can write to this namespace, and the hardware name. "
            "The bundle is complete; deploy again to retry."
        ) from None
    return f"https://huggingface.co/spaces/{space_id}"
