"""nasp.runs is the one home of run-folder fingerprints, used by sif.runs and nasp.commands.runs: its digest keeps
the byte format sif run folders were fingerprinted with (pinned below: the hashes sif's own copy gave before the
switch), so no existing sif run folder changes its fingerprint."""

from __future__ import annotations

import json

import numpy as np
import torch

import nasp.commands.runs as nasp_cmd_runs
import sif.runs as sif_runs
from data_loaders import random_split
from nasp.config import ConfigError
from nasp.runs import RunFolderError, differences, digest, flatten
from sif.config import load_config
from sif.synthetic import planted_ratings


def _splits(seed: int = 0) -> dict:
    parts = random_split(planted_ratings(n=300, num_users=20, num_items=30), seed=seed)
    return dict(zip(("train", "valid", "test"), parts, strict=True))


def _sif_data_message(key: str) -> str:
    """What sif.runs.differences says of a differing data entry (passed as ``data_message`` after the switch)."""
    what = "the id maps" if key == "ids_sha256" else f"the {key} ratings"
    return f"data: {what} differ (file content, ratings, rows or split changed)"


def test_digest_keeps_the_byte_format_of_sif_run_folders():
    """Pinned: the sha256 values sif.runs' own digest gave for these inputs before it was replaced by this one."""
    assert digest(np.arange(7, dtype=np.int64)) == "f8de566e529a5a398607008c496224e1e6fd0b9bccf1463d99bb104efad1277e"
    assert digest(torch.arange(5), None, np.asarray(["u1", "u22"]).astype(str)) == \
        "e85710e3206a1c46f7a5ff157c2869d807b28ba94724d3ba033498ab357b9f20"
    x = np.random.default_rng(0).standard_normal((4, 3))
    assert digest(x[:, 1]) == digest(np.ascontiguousarray(x[:, 1]))   # a strided view hashes as its values
    assert digest(torch.arange(5)) == digest(np.arange(5))         # a tensor hashes as its numpy view
    assert digest(np.arange(5)) != digest(np.arange(5).astype(np.int32)) != digest(np.arange(6))
    assert digest(torch.ones(2, requires_grad=True)) == digest(np.ones(2, dtype=np.float32))
    t = torch.rand(3, 4)
    assert digest(t.t()) == digest(t.t().contiguous())             # a transposed view hashes as its values


def test_digest_of_a_rating_split_and_its_id_maps_equals_sifs_data_fingerprint():
    splits = _splits()
    fp = sif_runs.data_fingerprint(splits)
    for name, ds in splits.items():
        assert fp[name]["sha256"] == digest(ds.users, ds.items, ds.ratings, ds.contexts)
    ds = splits["train"]
    assert fp["ids_sha256"] == digest(np.asarray(ds.user_ids).astype(str), np.asarray(ds.item_ids).astype(str))


def test_digest_of_json_values_is_stable_and_order_sensitive():
    assert digest(["a", "b"], {"y": 1, "x": 2}) == digest(["a", "b"], {"x": 2, "y": 1})
    assert digest(["a", "b"]) != digest(["b", "a"]) != digest(["a", "c"])
    assert digest(torch.arange(3), ["cat", "dog"]) != digest(torch.arange(3), ["dog", "cat"])


def test_flatten_gives_dotted_keys_and_keeps_named_leaves_whole():
    cfg = load_config("configs/sif_ml100k.yaml").to_dict()
    assert flatten(cfg)["train.lr"] == cfg["train"]["lr"] and "train" not in flatten(cfg)
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}, "e": {}}, "data": {"files": {"train": "t.txt"}, "n": 3}}
    assert flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "a.e": {}, "data.files.train": "t.txt", "data.n": 3}
    assert flatten(nested, leaves=("files",))["data.files"] == {"train": "t.txt"}


def test_differences_equal_sifs_on_stored_and_fresh_sif_fingerprints():
    data, other = _splits(), _splits(seed=1)
    base = load_config("configs/sif_ml100k.yaml")
    stored = json.loads(json.dumps(sif_runs.fingerprint(base.to_dict(), data, "search"), default=str))
    variants = [
        sif_runs.fingerprint(base.to_dict(), data, "search"),                               # the same run
        sif_runs.fingerprint(base.to_dict(), other, "search"),                              # other splits
        sif_runs.fingerprint(base.to_dict(), data, "train"),                                # other command
        sif_runs.fingerprint(load_config("configs/sif_ml100k.yaml", ["seed=3", "train.lr=0.5", "threads=2"])
                             .to_dict(), data, "search"),                                   # settings
        {"command": "search", "config": {"seed": 1.0}, "data": {}},                         # 1.0 == 1
    ]
    for fresh in variants:
        assert differences(stored, fresh, _sif_data_message) == sif_runs.differences(stored, fresh)
    assert differences(stored, variants[0]) == []
    assert "data: the valid ratings differ (file content, ratings, rows or split changed)" in \
        differences(stored, variants[1], _sif_data_message)
    assert differences(stored, variants[3]) == ["seed (0 -> 3)", "train.lr (0.001 -> 0.5)"]    # threads: none


def test_differences_read_a_stored_json_fingerprint_as_the_same_run():
    fresh = {"command": "x", "config": {"ops": ("a", "b"), "lr": float("nan"), "n": 2}, "data": {"train": "h"}}
    stored = json.loads(json.dumps(fresh))                       # tuple -> list, nan -> NaN
    assert differences(stored, fresh) == []
    assert differences(stored, {**fresh, "data": {"train": "g"}}) == ["the train data differ"]
    assert differences(stored, {**fresh, "config": {"n": 3}}) == ["lr (nan -> '<absent>')", "n (2 -> 3)",
                                                                    "ops (['a', 'b'] -> '<absent>')"]


def test_a_setting_added_since_the_old_run_at_its_default_is_no_difference():
    old = {"command": "c", "config": {"lr": 0.1}, "data": {}}
    new = {"command": "c", "config": {"lr": 0.1, "race_tie_z": 1.0}, "data": {}}
    assert differences(old, new, defaults={"race_tie_z": 1.0}) == []
    assert differences(old, new) == ["race_tie_z ('<absent>' -> 1.0)"]
    changed = {**new, "config": {"lr": 0.1, "race_tie_z": 2.0}}
    assert differences(old, changed, defaults={"race_tie_z": 1.0}) == ["race_tie_z ('<absent>' -> 2.0)"]


def test_one_error_type_and_both_commands_use_the_shared_pieces():
    assert issubclass(RunFolderError, ConfigError)
    assert sif_runs.RunFolderError is RunFolderError and sif_runs.digest is digest
    assert nasp_cmd_runs.RunFolderError is RunFolderError
    assert nasp_cmd_runs.digest is digest
    assert nasp_cmd_runs.differences is differences
