"""The encoder registry: specs, names, and every architecture built small (and full-size on 'meta')."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from stfeat.encoders import EncoderSpec, UnknownEncoderError, create_encoder, get_spec, list_encoders
from stfeat.encoders._timm import pool_multiplier
from stfeat.encoders.base import aliases_of, get_factory

ALL = [s.name for s in list_encoders()]
REQUIRED = {"uni", "uni2-h", "conch", "virchow2", "h-optimus-0", "h-optimus-1", "phikon-v2", "gigapath",
            "virchow", "phikon", "ctranspath", "h0-mini", "kaiko-vitb8", "lunit-vits8", "hibou-l", "midnight",
            "resnet50-trunc", "densenet121", "efficientnet-lite0", "classical", "conch-v1.5",
            # issue 11: the papers' and leaderboards' encoders
            "ciga-resnet18", "gpfm", "openmidnight", "kaiko-vitb16", "kaiko-vitl14", "h0-mini-clsmean"}


def _missing_package(spec: EncoderSpec) -> str | None:
    for pkg in spec.needs:
        if importlib.util.find_spec(pkg) is None:
            return pkg
    return None


def test_registry_holds_the_required_encoders():
    assert REQUIRED <= set(ALL)


def test_import_is_light_and_offline():
    code = ("import sys, stfeat.encoders as E; E.list_encoders(); "
            "print(sorted(m for m in ('torch', 'timm', 'huggingface_hub', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ALL)
def test_spec_is_consistent(name):
    s = get_spec(name)
    assert s.precision in {"fp32", "fp16", "bf16"}
    assert len(s.mean) == 3 and len(s.std) == 3 and all(v > 0 for v in s.std)
    assert s.input_px in {224, 448}
    if s.family == "ciga":  # GitHub-release weights, mixed-resolution pretraining: said in notes
        assert s.hub_id is None and s.um_per_px is None and "--weights" in s.notes
    elif s.family not in {"classical", "imagenet"}:
        assert s.hub_id and "/" in s.hub_id and s.um_per_px == 0.5
    json.dumps(s.to_dict())  # feeds the cache's config hash: must be plain JSON


def test_pinned_facts():
    v2 = get_spec("virchow2")
    assert (v2.embed_dim, v2.pooling, v2.model_kwargs["reg_tokens"]) == (2560, "cls+mean(tokens[5:])", 4)
    assert get_spec("virchow").pooling == "cls+mean(tokens[1:])"
    assert get_spec("uni2-h").precision == "bf16" and get_spec("uni2-h").model_kwargs["reg_tokens"] == 8
    assert get_spec("h-optimus-0").mean == (0.707223, 0.578729, 0.703617) and not get_spec("h-optimus-0").gated
    assert get_spec("gigapath").model_kwargs["patch_size"] == 16
    assert get_spec("conch").mean[0] == pytest.approx(0.48145466) and get_spec("conch").input_px == 448
    assert get_spec("midnight").embed_dim == 3072 and get_spec("efficientnet-lite0").mean == (0.5, 0.5, 0.5)
    assert get_spec("uni").hub_id == "MahmoodLab/UNI" and get_spec("uni").gated
    # h0-mini = HEST leaderboard pooling (CLS only); the card's CLS + patch mean has its own name
    assert (get_spec("h0-mini").embed_dim, get_spec("h0-mini").pooling) == (768, "cls")
    assert get_spec("h0-mini-cls").name == "h0-mini"
    assert get_spec("h0-mini-clsmean").embed_dim == 1536
    assert get_spec("h0-mini-clsmean").pooling == "cls+mean(tokens[5:])"
    assert (get_spec("gpfm").embed_dim, get_spec("openmidnight").embed_dim) == (1024, 1536)
    assert get_spec("openmidnight").gated and not get_spec("gpfm").gated
    assert get_spec("kaiko-vitl14").model_kwargs["img_size"] == 518
    assert get_spec("kaiko-vitb16").mean == (0.5, 0.5, 0.5) and get_spec("ciga-resnet18").embed_dim == 512


def test_checkpoint_layouts_of_new_encoders(tmp_path):
    """Ciga's Lightning keys (model./resnet. prefixes, fc head) and DINOv2-code backbone. prefixes load."""
    from safetensors.torch import save_file

    ref = create_encoder("ciga-resnet18", tiny=True)
    sd = {"model." + k: v.clone() for k, v in ref.model.state_dict().items()}
    sd["model.fc.0.weight"] = torch.zeros(4, 512)  # SimCLR projection head: ignored
    save_file(sd, str(tmp_path / "tenpercent.safetensors"))
    enc = create_encoder("ciga-resnet18", tiny=True, weights=tmp_path / "tenpercent.safetensors")
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    torch.testing.assert_close(enc(x), ref(x))
    for name in ("gpfm", "openmidnight"):
        ref = create_encoder(name, tiny=True)
        inner = getattr(ref.model, "model", ref.model)
        sd = {"backbone." + k: v.clone() for k, v in inner.state_dict().items()}
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        enc = create_encoder(name, tiny=True, weights=tmp_path / f"{name}.safetensors")
        torch.testing.assert_close(enc(x), ref(x))


def test_glob_aliases_and_unknown_names():
    assert [s.name for s in list_encoders("virchow*")] == ["virchow", "virchow2"]
    assert {s.name for s in list_encoders("*optimus*")} == {"h-optimus-0", "h-optimus-1"}
    assert get_spec("UNI2").name == "uni2-h" and get_spec("hoptimus0").name == "h-optimus-0"
    assert "uni_v1" in aliases_of("uni")
    with pytest.raises(UnknownEncoderError, match=r"Did you mean .*virchow2") as ei:
        get_spec("virchov2")
    assert isinstance(ei.value, KeyError) and "stfeat encoders" in str(ei.value)


@pytest.mark.parametrize("name", ALL)
def test_tiny_build_forward_follows_pooling_rule(name):
    """Real kwargs, reduced depth/width: a (2, 3, px, px) forward gives (2, dim) per the pooling rule."""
    spec = get_spec(name)
    pkg = _missing_package(spec)
    if pkg is not None:
        pytest.skip(f"{name} needs the optional package {pkg!r}")
    torch.manual_seed(0)
    enc = create_encoder(name, tiny=True)
    x = torch.randint(0, 256, (2, spec.input_px, spec.input_px, 3), dtype=torch.uint8)
    out = enc(x)
    assert out.shape == (2, enc.spec.embed_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert enc.weights_id == ("none" if name == "classical" else "random")
    inner = getattr(enc.model, "model", enc.model)
    width = getattr(inner, "num_features", None) or getattr(getattr(inner, "config", None), "hidden_size", None)
    if re.match(r"^cls(\+mean\(tokens\[\d+:\]\))?$", spec.pooling):
        assert enc.spec.embed_dim == pool_multiplier(spec.pooling) * width
    if spec.pooling.startswith("cls+mean(tokens["):
        start = int(re.search(r"tokens\[(\d+):", spec.pooling).group(1))
        assert enc.model.prefix == start  # patch mean skips CLS (+ registers)


@pytest.mark.parametrize("name", [n for n in ALL if n != "classical"])
def test_full_size_architecture_on_meta_device(name):
    """The real-size model (ViT-g included) built without memory: output width == spec.embed_dim."""
    spec, factory = get_factory(name)
    pkg = _missing_package(spec)
    if pkg is not None:
        pytest.skip(f"{name} needs the optional package {pkg!r}")
    with torch.device("meta"):
        model, path = factory(spec, None, pretrained=False, tiny=False)
        out = model(torch.empty(2, 3, spec.input_px, spec.input_px))
    assert path is None
    assert tuple(out.shape) == (2, spec.embed_dim)


def test_missing_optional_package_says_pip_install(monkeypatch):
    from stfeat.encoders import MissingDependencyError

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'transformers>=4.40'"):
        create_encoder("phikon-v2", tiny=True)
    monkeypatch.setitem(sys.modules, "conch", None)
    monkeypatch.setitem(sys.modules, "conch.open_clip_custom", None)
    with pytest.raises(MissingDependencyError, match=r"pip install git\+https://github.com/Mahmoodlab/CONCH"):
        create_encoder("conch", pretrained=False)


def test_encoder_checks_crop_size_and_accepts_both_layouts():
    enc = create_encoder("densenet121", tiny=True)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    a, b = enc(x), enc(x.permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="224x224"):
        enc(torch.zeros(1, 112, 112, 3, dtype=torch.uint8))
    cfg = enc.config()
    assert cfg["weights_id"] == "random" and cfg["spec"]["name"] == "densenet121"
