"""backbone -> optional bottleneck -> head; returns ``(logits, features)`` in every mode."""
from mindspore import nn

from engine.registry import BACKBONES, HEADS
from models.modules import Bottleneck


class Classifier(nn.Cell):
    def __init__(self, backbone, num_classes, bottleneck_dim=0, head="linear", backbone_lr_mult=1.0):
        super().__init__()
        self.backbone = backbone
        feat = backbone.out_features
        self.bottleneck = Bottleneck(feat, bottleneck_dim) if bottleneck_dim > 0 else nn.Identity()
        self.features_dim = bottleneck_dim if bottleneck_dim > 0 else feat
        self.head = HEADS.build(head, self.features_dim, num_classes)
        self.backbone_lr_mult = backbone_lr_mult

    def construct(self, x):
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f

    def lr_groups(self):
        """``{name: (params, lr_mult)}``: pretrained backbones usually train at 0.1x."""
        backbone = self.backbone.trainable_params()
        ids = {id(p) for p in backbone}
        rest = [p for p in self.trainable_params() if id(p) not in ids]
        return {"backbone": (backbone, self.backbone_lr_mult), "head": (rest, 1.0)}


def create_model(cfg_model, in_channels=3, image_size=28):
    """Build a :class:`Classifier` from a ``ModelCfg`` (pretrained weights loaded if given)."""
    kwargs = dict(cfg_model.backbone_kwargs)
    kwargs.setdefault("in_channels", in_channels)
    kwargs.setdefault("image_size", image_size)
    if cfg_model.norm_plugins:
        kwargs["norm_plugins"] = cfg_model.norm_plugins
    backbone = BACKBONES.build(cfg_model.backbone, **kwargs)
    if cfg_model.pretrained:
        from engine.checkpoint import load_backbone_weights

        load_backbone_weights(backbone, cfg_model.pretrained)
    return Classifier(backbone, cfg_model.num_classes, cfg_model.bottleneck_dim, cfg_model.head,
                      cfg_model.backbone_lr_mult)
