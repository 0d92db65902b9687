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
            "ciga-resnet18", "gpfm", "openmidnight", "kaiko-vitb16", "kaiko-vitl14", "h0-mini-clsmean",
            "musk", "musk-msaug", "genbio-pathfm"}


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
    assert s.input_px in {224, 384, 448}  # 384: MUSK
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


# ----------------------------------------------------------------------------- MUSK and GenBio-PathFM


def test_musk_and_genbio_facts():
    for name in ("musk", "musk-msaug"):
        s = get_spec(name)
        assert (s.hub_id, s.input_px, s.precision, s.gated) == ("xiangjx/musk", 384, "fp16", True)
        assert s.mean == s.std == (0.5, 0.5, 0.5) and s.license == "CC-BY-NC-ND-4.0"
        assert s.arch == "musk_large_patch16_384" and set(s.needs) == {"musk", "fairscale"}
        assert s.model_kwargs["with_head"] is False and s.model_kwargs["out_norm"] is False
    # musk = TRIDENT's pooling (CLS 1024); the README's multi-scale feature has its own name
    assert (get_spec("musk").embed_dim, get_spec("musk").pooling) == (1024, "cls")
    assert get_spec("musk").model_kwargs["ms_aug"] is False and get_spec("musk-msaug").model_kwargs["ms_aug"]
    assert get_spec("musk-msaug").embed_dim == 2048 and get_spec("musk-ms").name == "musk-msaug"
    g = get_spec("genbio-pathfm")
    assert (g.hub_id, g.embed_dim, g.input_px, g.precision) == ("genbio-ai/genbio-pathfm", 4608, 224, "bf16")
    assert g.mean == (0.697, 0.575, 0.728) and g.std == (0.188, 0.240, 0.187)
    assert g.license == "GenBio AI Community (non-commercial)" and not g.gated and "not verified" in g.notes
    kw = g.model_kwargs
    dims = (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["in_chans"], kw["n_storage_tokens"])
    assert dims == (1536, 40, 24, 1, 4)
    assert kw["ffn_layer"] == "swiglu64" and kw["layerscale_init"] == 1e-5 and kw["qkv_bias"] is False
    assert g.needs == ("genbio_pathfm",) and get_spec("genbio").name == "genbio-pathfm"
    assert "trust_remote_code" in g.notes  # the hub's remote code is named, and not used


def test_musk_and_genbio_without_their_packages_say_pip_install(monkeypatch):
    from stfeat.encoders import MissingDependencyError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STFEAT_WEIGHTS_DIR", raising=False)
    for mod in ("musk", "musk.modeling", "genbio_pathfm", "genbio_pathfm.model"):
        monkeypatch.setitem(sys.modules, mod, None)
    for name in ("musk", "musk-msaug"):  # before any download: the package error, not a hub error
        with pytest.raises(MissingDependencyError,
                           match=r"'musk'.*pip install fairscale git\+https://github.com/lilab-stanford/MUSK"):
            create_encoder(name)
    with pytest.raises(MissingDependencyError,
                       match=r"'genbio_pathfm'.*pip install git\+https://github.com/genbio-ai/genbio-pathfm"):
        create_encoder("genbio-pathfm")
    _stand_in_musk(monkeypatch)  # musk there, fairscale missing: named too
    monkeypatch.setitem(sys.modules, "fairscale", None)
    with pytest.raises(MissingDependencyError, match=r"'fairscale'.*pip install fairscale git\+"):
        create_encoder("musk", pretrained=False)


def _package(monkeypatch, name: str, **attrs):
    import types

    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so submodules resolve from sys.modules
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def _stand_in_musk(monkeypatch) -> list[dict]:
    """A few-line stand-in for the musk package's interface (not its architecture); records forward kwargs."""
    import torch.nn as nn

    calls: list[dict] = []

    class EncoderConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class MUSK(nn.Module):
        def __init__(self, args, **kw):
            super().__init__()
            self.args = args
            self.patch = nn.Conv2d(3, args.encoder_embed_dim, 16, 16)

        def forward(self, image=None, text_description=None, padding_mask=None, return_global=True,
                    with_head=True, out_norm=True, ms_aug=False):
            calls.append({"with_head": with_head, "out_norm": out_norm, "ms_aug": ms_aug,
                          "return_global": return_global})
            cls = self.patch(image).flatten(2).mean(-1)
            return (torch.cat([cls, 2 * cls], dim=-1) if ms_aug else cls), None

    for name in ("musk", "musk.torchscale", "musk.torchscale.architecture", "fairscale"):
        _package(monkeypatch, name)
    _package(monkeypatch, "musk.modeling", MUSK=MUSK)
    _package(monkeypatch, "musk.torchscale.architecture.config", EncoderConfig=EncoderConfig)
    return calls


def test_musk_glue_on_a_stand_in_package(monkeypatch, tmp_path):
    """Forward kwargs (TRIDENT's for musk, ms_aug for musk-msaug) and strict loading of model.safetensors."""
    from safetensors.torch import save_file

    from stfeat.errors import InputError

    calls = _stand_in_musk(monkeypatch)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 384, 384, 3), dtype=torch.uint8)
    enc = create_encoder("musk", tiny=True)
    out = enc(x)
    assert out.shape == (2, 48) and enc.spec.embed_dim == 48
    assert calls[-1] == {"with_head": False, "out_norm": False, "ms_aug": False, "return_global": True}
    args = enc.model.musk.args
    assert (args.img_size, args.patch_size, args.vocab_size, args.encoder_layers) == (384, 16, 64010, 1)
    ms = create_encoder("musk-msaug", tiny=True)
    assert ms(x).shape == (2, 96) and calls[-1]["ms_aug"] is True and calls[-1]["with_head"] is False
    sd = {k: v.clone().contiguous() for k, v in enc.model.musk.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(create_encoder("musk", tiny=True, weights=tmp_path / "model.safetensors")(x), out)
    save_file({k: v for k, v in sd.items() if k != "patch.bias"}, str(tmp_path / "short.safetensors"))
    with pytest.raises(InputError, match="missing keys .*patch.bias"):
        create_encoder("musk", tiny=True, weights=tmp_path / "short.safetensors")


def test_genbio_glue_on_a_stand_in_package(monkeypatch, tmp_path):
    """Channels as separate 1-channel images, R|G|B CLS concat, model.pth read with weights_only and strictly."""
    import torch.nn as nn

    from stfeat.errors import InputError

    class VisionTransformer(nn.Module):  # the package's interface, not its architecture
        def __init__(self, *, embed_dim=768, patch_size=16, in_chans=1, n_storage_tokens=4, **kw):
            super().__init__()
            self.kwargs = dict(kw, embed_dim=embed_dim, patch_size=patch_size, in_chans=in_chans)
            self.num_features = embed_dim
            self.n_storage_tokens = n_storage_tokens
            self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
            self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
            self.storage_tokens = nn.Parameter(torch.empty(1, n_storage_tokens, embed_dim))
            self.norm = nn.LayerNorm(embed_dim)

        def forward_features(self, x):
            assert x.shape[1] == 1
            return {"x_norm_clstoken": self.norm(self.cls_token[:, 0] + self.patch_embed(x).flatten(2).mean(-1))}

    _package(monkeypatch, "genbio_pathfm")
    _package(monkeypatch, "genbio_pathfm.model", VisionTransformer=VisionTransformer)
    torch.manual_seed(0)
    enc = create_encoder("genbio-pathfm", tiny=True)
    vit = enc.model.model
    assert vit.kwargs["in_chans"] == 1 and vit.kwargs["depth"] == 1 and vit.kwargs["qkv_bias"] is False
    assert torch.isfinite(vit.cls_token).all()  # weightless builds are initialised, not torch.empty
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    out = enc(x)
    assert out.shape == (2, 3 * 48) and enc.spec.embed_dim == 144
    xn = enc.preprocess(x)
    with torch.inference_mode():
        for c in range(3):
            cls = vit.forward_features(xn[:, c:c + 1])["x_norm_clstoken"]
            torch.testing.assert_close(out[:, 48 * c:48 * (c + 1)], cls)
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    torch.save(sd, tmp_path / "model.pth")
    torch.testing.assert_close(create_encoder("genbio-pathfm", tiny=True, weights=tmp_path / "model.pth")(x), out)
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "bad.pth")
    with pytest.raises(InputError, match="unexpected keys"):
        create_encoder("genbio-pathfm", tiny=True, weights=tmp_path / "bad.pth")
