"""Local weights (strict keys, safe readers, sha256 identity) and hub access (mocked, never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stfeat.encoders import HubAccessError, create_encoder
from stfeat.encoders._weights import find_local_weights, read_state_dict, weights_sha256
from stfeat.errors import InputError


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("STFEAT_CACHE_DIR", str(tmp_path / "stfeat-cache"))
    monkeypatch.delenv("STFEAT_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _tiny_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    enc = create_encoder(name, tiny=True)
    inner = getattr(enc.model, "model", enc.model)
    return {k: v.clone().contiguous() for k, v in inner.state_dict().items()}


def _save_safetensors(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


X = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_tiny_vit_safetensors_round_trip(tmp_path):
    sd = _tiny_state("uni", seed=3)
    f = _save_safetensors(sd, tmp_path / "uni_tiny.safetensors")
    a = create_encoder("uni", weights=f, tiny=True)
    torch.manual_seed(99)  # a different random init: only the file can make the outputs agree
    b = create_encoder("uni", weights=f, tiny=True)
    torch.testing.assert_close(a(X), b(X))
    for k, v in sd.items():
        torch.testing.assert_close(a.model.state_dict()[k], v)
    assert a.weights_id == f"sha256:{weights_sha256(f)}" and len(a.weights_id) == 7 + 64
    assert a.source == str(f)


def test_pth_and_folder_and_container_are_read(tmp_path):
    sd = _tiny_state("virchow2", seed=4)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pth")
    enc = create_encoder("virchow2", weights=tmp_path / "ckpt.pth", tiny=True)
    assert enc(X).shape == (2, 96)  # 2 x 48: CLS ⊕ mean(tokens[5:])
    folder = tmp_path / "snap"
    folder.mkdir()
    _save_safetensors(sd, folder / "model.safetensors")
    enc2 = create_encoder("virchow2", weights=folder, tiny=True)
    torch.testing.assert_close(enc(X), enc2(X))


def test_strict_loading_names_file_and_keys(tmp_path):
    sd = _tiny_state("uni")
    bad = dict(sd)
    bad.pop("blocks.0.ls1.gamma")
    bad["extra.weight"] = torch.zeros(2)
    f = _save_safetensors(bad, tmp_path / "bad.safetensors")
    with pytest.raises(InputError) as ei:
        create_encoder("uni", weights=f, tiny=True)
    msg = str(ei.value)
    assert str(f) in msg and "blocks.0.ls1.gamma" in msg and "extra.weight" in msg and "1 missing" in msg
    wrong = dict(sd)
    wrong["cls_token"] = torch.zeros(1, 1, 7)
    f2 = _save_safetensors(wrong, tmp_path / "shape.safetensors")
    with pytest.raises(InputError, match=r"shape mismatch.*cls_token"):
        create_encoder("uni", weights=f2, tiny=True)
    with pytest.raises(InputError, match="does not exist"):
        create_encoder("uni", weights=tmp_path / "nope.safetensors", tiny=True)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, f)
    with pytest.raises(InputError, match=r"weights_only=True"):
        read_state_dict(f)


def test_sha256_is_cached_by_path_mtime_size(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    d1 = weights_sha256(f)
    assert d1 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    cache = json.loads((tmp_path / "stfeat-cache" / "weights_sha256.json").read_text())
    assert list(cache.values()) == [d1]
    f.write_bytes(b"abcd")  # size (and mtime) change -> recomputed
    assert weights_sha256(f) != d1


def test_weights_dir_env(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    (root / "UNI2-h").mkdir(parents=True)
    _save_safetensors({"a": torch.zeros(1)}, root / "UNI2-h" / "model.safetensors")
    _save_safetensors({"a": torch.zeros(1)}, root / "densenet121.safetensors")
    monkeypatch.setenv("STFEAT_WEIGHTS_DIR", str(root))
    assert find_local_weights(["uni2-h"]) == root / "UNI2-h" / "model.safetensors"
    assert find_local_weights(["densenet121"]) == root / "densenet121.safetensors"
    assert find_local_weights(["virchow"]) is None


# ---------------------------------------------------------------- hub (mocked)
def _http_response(code: int):
    for mod in ("httpx2", "httpx"):
        try:
            m = __import__(mod)
            return m.Response(code, request=m.Request("GET", "https://huggingface.co/api/models/x"))
        except ImportError:
            continue
    pytest.skip("no HTTP response class to build a huggingface_hub error")


def test_hub_route_requests_real_ids_and_kwargs(tmp_path, monkeypatch):
    """create_encoder('virchow2') asks the hub for paige-ai/Virchow2 and builds timm with the card's kwargs."""
    import huggingface_hub
    import timm

    f = _save_safetensors(_tiny_state("virchow2", seed=5), tmp_path / "model.safetensors")
    calls, built = [], []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw.get("local_files_only")))
        return str(f)

    real_create = timm.create_model

    def fake_create(arch, pretrained=False, **kw):
        built.append((arch, pretrained, dict(kw)))
        kw.update(depth=1, embed_dim=48, num_heads=2)  # shrink only the size, keep everything else
        return real_create(arch, pretrained=pretrained, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(timm, "create_model", fake_create)
    enc = create_encoder("virchow2")
    assert calls == [("paige-ai/Virchow2", "model.safetensors", False)]
    arch, pretrained, kw = built[0]
    assert arch == "vit_huge_patch14_224" and pretrained is False
    assert kw["mlp_layer"] is timm.layers.SwiGLUPacked and kw["act_layer"] is torch.nn.SiLU
    assert (kw["reg_tokens"], kw["global_pool"], kw["init_values"], kw["mlp_ratio"]) == (4, "", 1e-5, 5.3375)
    with torch.no_grad():  # the spec says 2560; the shrunk model gives the same rule on width 48
        assert enc.model(enc.preprocess(X)).shape == (2, 2560 // 1280 * 48)
    assert enc.weights_id == f"sha256:{weights_sha256(f)}"


def test_uni_hub_file_order(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        raise RemoteEntryNotFoundError("404", response=_http_response(404))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(HubAccessError, match="none of the expected weight files"):
        create_encoder("uni")
    assert calls == [("MahmoodLab/UNI", "pytorch_model.bin"), ("MahmoodLab/UNI", "model.safetensors")]


@pytest.mark.parametrize("kind", ["gated", "401", "no-token"])
def test_gated_error_says_what_to_do(monkeypatch, kind):
    import huggingface_hub
    from huggingface_hub import errors

    def fake_download(repo_id, filename, **kw):
        if kind == "gated":
            raise errors.GatedRepoError("403 Client Error: access to model is restricted", response=_http_response(403))
        if kind == "401":
            raise errors.RepositoryNotFoundError("401 Client Error", response=_http_response(401))
        raise errors.LocalTokenNotFoundError("Token is required but no token found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(HubAccessError) as ei:
        create_encoder("uni2-h")
    msg = str(ei.value)
    for needle in ("MahmoodLab/UNI2-h", "request access on https://huggingface.co/MahmoodLab/UNI2-h",
                   "huggingface-cli login", "HF_TOKEN", "--weights", "STFEAT_WEIGHTS_DIR/uni2-h"):
        assert needle in msg
    assert isinstance(ei.value, InputError)


def test_offline_fails_fast_from_cache_only(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1: only the local cache is consulted (here, really: an empty HF cache)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub

    seen = []
    real = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kw):
        seen.append(kw.get("local_files_only"))
        return real(repo_id, filename, cache_dir=str(tmp_path / "hf"), **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(HubAccessError, match=r"HF_HUB_OFFLINE=1 is set and bioptimus/H-optimus-0 .* not in the local cache"):
        create_encoder("h-optimus-0")
    assert seen and all(seen)


def test_generic_timm_hub_and_local_folder(tmp_path, monkeypatch):
    import huggingface_hub
    import timm

    m = timm.create_model("resnet18", num_classes=10)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    folder = tmp_path / "repo"
    folder.mkdir()
    _save_safetensors(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 10,
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5],
                           "classifier": "fc"}}))
    local = create_encoder(folder)
    assert local.spec.embed_dim == 512 and local.spec.mean == (0.1, 0.2, 0.3)
    assert local(X).shape == (2, 512)

    def fake_download(repo_id, filename, **kw):
        assert repo_id == "someone/resnet"
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub = create_encoder("hf-hub:someone/resnet")
    torch.testing.assert_close(hub(X), local(X))
    t = create_encoder("timm:resnet18", weights=folder / "model.safetensors")  # classifier keys ignored
    assert t.spec.mean == (0.485, 0.456, 0.406)  # timm's own config for resnet18
    z = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(t.model(z), local.model(z))
    with pytest.raises(InputError, match="architecture of this weights file is unknown"):
        create_encoder(_save_safetensors(sd, tmp_path / "lonely.safetensors"))
    assert create_encoder(tmp_path / "lonely.safetensors", arch="resnet18").spec.embed_dim == 512


def test_ctranspath_original_checkpoint_layout(tmp_path):
    """A TransPath-style checkpoint ({'model': ...}, downsample at the END of stages, attn_mask and
    relative_position_index buffers, a head) maps onto timm's Swin layout with strict keys."""
    import re

    torch.manual_seed(7)
    ref = create_encoder("ctranspath", tiny=True)
    legacy = {}
    for k, v in ref.model.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        legacy[k] = v.clone()
    legacy["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    legacy["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    legacy["head.weight"] = torch.zeros(5, 192)
    legacy["head.bias"] = torch.zeros(5)
    torch.save({"model": legacy}, tmp_path / "ctranspath.pth")
    enc = create_encoder("ctranspath", weights=tmp_path / "ctranspath.pth", tiny=True)
    torch.testing.assert_close(enc(X), ref(X))
    assert enc(X).shape == (2, 192)  # Swin width x 8 (768 at full size)


def test_conch_v15_pos_embed_is_resampled(tmp_path):
    torch.manual_seed(8)
    sd = _tiny_state("conch-v1.5")
    assert sd["trunk.pos_embed"].shape == (1, 1 + 28 * 28, 48)  # 448 px / 16
    sd["trunk.pos_embed"] = torch.randn(1, 1 + 14 * 14, 48)  # a 224 px grid in the file
    f = _save_safetensors(sd, tmp_path / "pytorch_model_vision.safetensors")
    enc = create_encoder("conch-v1.5", weights=f, tiny=True)
    x = torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8)
    assert enc(x).shape == (2, 32)


def test_transformers_snapshot_folder(tmp_path):
    """An offline Hugging Face snapshot (config.json + model.safetensors) of a DINOv2 model loads strictly;
    the folder's config decides the sizes."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=224,
                                    patch_size=16)
    torch.manual_seed(9)
    model = transformers.Dinov2Model(cfg)
    snap = tmp_path / "phikon-v2"
    snap.mkdir()
    cfg.to_json_file(str(snap / "config.json"))
    _save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, snap / "model.safetensors")
    enc = create_encoder("phikon-v2", weights=snap)
    with torch.no_grad():
        ref = model(pixel_values=enc.preprocess(X)).last_hidden_state[:, 0]
    out = enc.model(enc.preprocess(X))
    torch.testing.assert_close(out, ref)
    bad = {k: v.contiguous() for k, v in model.state_dict().items() if "layernorm" not in k}
    _save_safetensors(bad, snap / "model.safetensors")
    with pytest.raises(InputError, match=r"missing keys \(layernorm"):
        create_encoder("phikon-v2", weights=snap)
