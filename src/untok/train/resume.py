"""The config of a resumed run: the saved one, with what the user may change on resume."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from untok.checkpoint import read_train_state, resolve_checkpoint
from untok.config import RunConfig, from_dict, replace, resolve
from untok.config.loading import migrate_v1
from untok.data.ingest import data_exists
from untok.data.store import ByteStore
from untok.errors import CheckpointError, UntokError


def resume_config(checkpoint: str | Path, *, data: str | None = None,
                  overrides: Iterable[str] = (), budget: dict[str, Any] | None = None
                  ) -> tuple[RunConfig, Path]:
    """(config, checkpoint directory) to continue the run saved in ``checkpoint``: its
    saved config (keys of untok 0.1 converted silently), its data at ``data`` when given
    (the trainer checks it is the same by its SHA-256), ``--set`` ``overrides`` applied,
    and a new ``budget`` (steps / bytes / minutes) replacing the saved one."""
    path = resolve_checkpoint(checkpoint, prefer="last")
    state = read_train_state(path)
    saved = migrate_v1(state["run_config"], lambda message: None)
    if data:  # the same data at another place
        saved = {**saved, "data": {**saved["data"], "path": data}}
    elif not data_exists(saved["data"]["path"]):
        raise UntokError(f"the data this run was trained on is not at "
                         f"{saved['data']['path']} any more; pass --data PATH to the "
                         f"same data ('{state['data']['name']}') where it is now")
    config = resolve(base=saved, overrides=overrides)
    if budget:
        config = replace(config, train={"steps": None, "bytes": None, "minutes": None,
                                        **budget})
    return config, path


def check_resumable(checkpoint: str | Path, config: RunConfig, store: ByteStore) -> Path:
    """The checkpoint directory, once it is known to hold a run of ``config``'s model on
    ``store``'s data (a one-line error otherwise)."""
    path = resolve_checkpoint(checkpoint, prefer="last")
    state = read_train_state(path)
    if from_dict(state["run_config"]).model != config.model:
        raise CheckpointError(f"cannot resume {path} with a different model config; "
                              "change only train.* settings on resume")
    if state["data"]["sha256"] != store.meta["sha256"]:
        raise CheckpointError(f"{path} was trained on different data "
                              f"('{state['data']['name']}'); resume with the same --data")
    return path
