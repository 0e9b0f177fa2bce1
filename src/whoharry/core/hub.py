"""Publishing an unlearned model folder to the Hugging Face hub (`whoharry push`), through huggingface_hub."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from whoharry.core import artifacts
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # OWNER/NAME, as the hub spells model repositories
CARD = "README.md"


def pushable(run: Path) -> Path:
    """The unlearned model folder of a finished run (`run/unlearn/final`), checked before anything is sent.

    Raises:
        WhoharryError: no such folder; the unlearn stage has not finished (no complete manifest), or its
            folder lacks the weights' config or the model card.
    """
    if not run.is_dir():
        raise WhoharryError(f"run folder not found: {run}")
    manifest = artifacts.read_json_object(run / "unlearn" / "manifest.json") or {}
    folder = run / "unlearn" / "final"
    if manifest.get("status") != "complete" or not (folder / "config.json").is_file():
        raise WhoharryError(f"{run} holds no finished unlearned model (unlearn/manifest.json not complete); "
                            "finish the run first")
    if not (folder / CARD).is_file():
        raise WhoharryError(f"{folder} has no model card ({CARD}); run `whoharry eval --out {run}` to write it")
    return folder


def push_folder(folder: Path, repo: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the model repository `repo` (kept if it exists) and upload `folder` to it as one commit: the
    weights, tokenizer, model card and the whoharry config and manifest beside them.

    Args:
        folder: a save_pretrained folder (`pushable`).
        repo: OWNER/NAME.
        private: create the repository private (an existing one keeps its visibility).
        token: a hub token; default the one `huggingface-cli login` or `HF_TOKEN` left.

    Returns:
        The URL of the commit (a str).

    Raises:
        WhoharryError: a repository id that is not OWNER/NAME, no token, or any refusal of the hub (no
            rights, no network), in one line.
    """
    from huggingface_hub import HfApi, get_token

    if not REPO_ID.match(repo):
        raise WhoharryError(f"--repo {repo!r}: give OWNER/NAME")
    if token is None and get_token() is None:
        raise WhoharryError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo, folder_path=folder, repo_type="model",
                                   commit_message="Upload an unlearned model made with whoharry")
    except Exception as exc:  # noqa: BLE001 - the hub's and the network's errors end here, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WhoharryError(f"push to {repo} failed: {first}") from None
    url = getattr(commit, "commit_url", None) or str(commit)
    log.info("pushed %s to %s", folder, url)
    return url
