"""Whether the files a model build will fetch (weights, a Hugging Face tokenizer) can be had, asked first.

open_clip and huggingface_hub retry a download several times with back-off before they give up,
which without a network costs the better part of a minute and ends in an error cut mid-sentence.
A build asks here first: a file already in the local cache is fine; otherwise the hub must answer
one short connection attempt (and ``HF_HUB_OFFLINE`` means it will not), or the build stops at
once with the offline ways to provide the file.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

from .errors import RadaError

# open_clip's file names on the hub: the safetensors copy is tried before the torch one.
OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "on", "true", "yes")

_reachable: dict[str, bool] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class RemoteFile:
    """A file a build would download: a hub repository and the names it may have, or a plain URL."""

    what: str  # "weights of ViT-B-16/openai", "tokenizer of ViT-B-16-SigLIP"
    repo_id: str = ""
    filenames: tuple[str, ...] = ()
    url: str = ""
    url_cache: str = ""  # where open_clip keeps a URL download


def hub_offline() -> bool:
    """True when the user told huggingface_hub there is no network (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def host_answers(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """One TCP connection attempt to the URL's host (remembered for the process): no retries, no back-off."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    key = f"{host}:{port}"
    with _lock:
        if key in _reachable:
            return _reachable[key]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            answered = True
    except OSError:
        answered = False
    with _lock:
        _reachable[key] = answered
    return answered


def cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> Optional[str]:
    """The local path of the first of ``filenames`` that huggingface_hub's cache holds, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def weights_file(model: str, tag: str) -> Optional[RemoteFile]:
    """What open_clip will download for ``model`` / ``tag``, or None when nothing is fetched."""
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    cfg = get_pretrained_cfg(model, tag) or {}
    if not cfg or cfg.get("file"):
        return None
    what = f"weights of {model}/{tag}"
    hub = str(cfg.get("hf_hub", ""))
    if hub and has_hf_hub():
        repo_id, filename = os.path.split(hub)  # "org/repo/" names open_clip's default file
        if not filename:
            return RemoteFile(what, repo_id=repo_id, filenames=OPEN_CLIP_HUB_FILES)
        return RemoteFile(what, repo_id=repo_id, filenames=(os.path.splitext(filename)[0] + ".safetensors", filename))
    url = str(cfg.get("url", ""))
    if url:
        return RemoteFile(what, url=url, url_cache=os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))
    return None


def tokenizer_file(model: str) -> Optional[RemoteFile]:
    """The Hugging Face tokenizer ``model``'s text tower names (SigLIP, SigLIP2...), or None."""
    import open_clip

    cfg = open_clip.get_model_config(model) or {}
    repo = (cfg.get("text_cfg") or {}).get("hf_tokenizer_name")
    if not repo or os.path.isdir(str(repo)):
        return None
    return RemoteFile(f"tokenizer of {model} ({repo})", repo_id=str(repo), filenames=TOKENIZER_FILES)


def unavailable(remote: RemoteFile, answers: Callable[[str], bool] = host_answers) -> Optional[str]:
    """Why ``remote`` cannot be had here, or None when it is cached or its host answers."""
    if remote.url:
        if os.path.isfile(remote.url_cache):
            return None
        if answers(remote.url):
            return None
        return (f"no copy of the {remote.what} is in {os.path.dirname(remote.url_cache)}, "
                f"and {urlparse(remote.url).hostname} does not answer")
    if cached_hub_file(remote.repo_id, remote.filenames):
        return None
    where = f"the Hugging Face cache ({_hub_cache()})"
    if hub_offline():
        return f"no copy of the {remote.what} is in {where}, and HF_HUB_OFFLINE is set"
    if answers(hub_endpoint()):
        return None
    return f"no copy of the {remote.what} is in {where}, and the hub ({hub_endpoint()}) does not answer"


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def check_fetchable(model: str, tag: Optional[str], weights_hint: str) -> None:
    """Stops a build at once, before open_clip's retries, when a file it needs cannot be had."""
    if tag:
        remote = weights_file(model, tag)
        problem = unavailable(remote) if remote else None
        if problem:
            raise RadaError(problem, weights_hint, field="pretrained")
    remote = tokenizer_file(model)
    problem = unavailable(remote) if remote else None
    if problem:
        raise RadaError(
            problem,
            f"fill the Hugging Face cache with {remote.repo_id} on a machine with network (HF_HOME points at it), "
            f"or use model='local-dir:/path', a folder holding open_clip_config.json, the weights and "
            f"the tokenizer files ({', '.join(TOKENIZER_FILES)})",
            field="model",
        )
