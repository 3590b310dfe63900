"""Files from the Hugging Face Hub through the local cache: what is cached loads offline at once, and what is not
gets one download attempt, not a round of retries, before a message that says what was tried."""

from __future__ import annotations

from pathlib import Path


class HubError(ValueError):
    """An id that is neither a local folder nor in the cache, and could not be downloaded."""


def hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None) -> Path:
    """The local folder of `repo_id` (a model repo): the cached snapshot, or one download attempt."""
    from huggingface_hub import constants, snapshot_download

    kwargs = {"revision": revision, "allow_patterns": allow_patterns}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:  # not in the cache (or not all of it): try the Hub once
        pass
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"{repo_id!r} is not a local folder and not in the HF cache, and HF_HUB_OFFLINE is set.")
    try:
        return Path(snapshot_download(repo_id, max_workers=1, **kwargs))
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(
            f"{repo_id!r} is not a local folder or in the HF cache, and downloading it from the Hub failed "
            f"({type(err).__name__}: {reason}). Check the path or id; offline, run once where the Hub is reachable to "
            "fill the cache."
        ) from None
