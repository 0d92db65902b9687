"""Real ImageNet weights from ../shared/weights load strictly and give ImageNet behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stfeat.encoders import create_encoder
from stfeat.encoders._weights import load_strict, read_state_dict

DENSENET_SHA = "1d8a15b18689b4e279dd7823d5df3d1a439e64725f271fc0a1b13e6ad282d63f"
EFFNET_SHA = "2d3c8842439142fd39d077f8ac8b5fe76fc6579afee06a208b3dc0c31a6ba90d"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STFEAT_CACHE_DIR", str(tmp_path / "cache"))


def test_densenet121_shared_weights(shared_weights, tmp_path, monkeypatch):
    f = shared_weights / "densenet121.in1k_keras.safetensors"
    enc = create_encoder("densenet121", weights=f)
    assert enc.weights_id == f"sha256:{DENSENET_SHA}"
    sd = read_state_dict(f)
    own = enc.model.state_dict()
    assert set(sd) == set(own)  # strict: every key of the file is in the model and back
    torch.testing.assert_close(own["features.norm5.weight"], sd["features.norm5.weight"])
    x = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = enc(x)
    assert out.shape == (1, 1024) and (out >= 0).all()  # ReLU before the average pool
    # found through $STFEAT_WEIGHTS_DIR without weights=
    root = tmp_path / "w"
    root.mkdir()
    (root / "densenet121.safetensors").symlink_to(f)
    monkeypatch.setenv("STFEAT_WEIGHTS_DIR", str(root))
    again = create_encoder("densenet121")
    assert again.weights_id == enc.weights_id
    torch.testing.assert_close(again(x), out)


def test_efficientnet_lite0_recognises_the_cat(shared_weights):
    """timm's own transform + the shared weights put chelsea() in {281, 282, 285}; the registry
    encoder gives exactly the classifier's input on the same pixels."""
    import timm
    import torchvision.transforms as T
    from PIL import Image

    data = pytest.importorskip("skimage.data")
    f = shared_weights / "tf_efficientnet_lite0.in1k.safetensors"
    model = timm.create_model("tf_efficientnet_lite0")
    load_strict(model, read_state_dict(f), f, what="tf_efficientnet_lite0")
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    tf = timm.data.create_transform(**cfg)
    img = Image.fromarray(data.chelsea())
    with torch.no_grad():
        logits = model(tf(img).unsqueeze(0))
    assert int(logits.argmax()) in {281, 282, 285}

    enc = create_encoder("efficientnet-lite0", weights=f)
    assert enc.weights_id == f"sha256:{EFFNET_SHA}" and enc.spec.mean == (0.5, 0.5, 0.5)
    geometric = T.Compose([t for t in tf.transforms if isinstance(t, (T.Resize, T.CenterCrop))])
    crop = torch.from_numpy(np.array(geometric(img))).unsqueeze(0)  # uint8 (1, 224, 224, 3)
    feats = enc(crop)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(tf(img).unsqueeze(0)), pre_logits=True)
        torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)
        assert int(model.classifier(feats).argmax()) in {281, 282, 285}
