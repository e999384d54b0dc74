"""backbone -> optional bottleneck -> head; returns ``(logits, features)`` in every mode."""
from mindspore import nn

from engine.registry import BACKBONES, HEADS, SEGMENTERS
from models.modules import Bottleneck


class Classifier(nn.Cell):
    def __init__(self, backbone, num_classes, bottleneck_dim=0, head="linear", backbone_lr_mult=1.0,
                 head_lr_mult=1.0, head_kwargs=None):
        super().__init__()
        self.backbone = backbone
        feat = backbone.out_features
        self.bottleneck = Bottleneck(feat, bottleneck_dim) if bottleneck_dim > 0 else nn.Identity()
        self.features_dim = bottleneck_dim if bottleneck_dim > 0 else feat
        try:
            self.head = HEADS.build(head, self.features_dim, num_classes, **(head_kwargs or {}))
        except TypeError as err:
            raise ValueError(f"model.head_kwargs for head {head!r}: {err}") from None
        self.backbone_lr_mult, self.head_lr_mult = backbone_lr_mult, head_lr_mult

    def construct(self, x):
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f

    def lr_groups(self):
        """``{name: (params, lr_mult)}``: pretrained backbones usually train at 0.1x."""
        backbone = self.backbone.trainable_params()
        return {"backbone": (backbone, self.backbone_lr_mult), "head": (other_params(self, backbone), self.head_lr_mult)}


def other_params(model, params):
    """``model``'s trainable parameters that are not in ``params``, in the model's order."""
    ids = {id(p) for p in params}
    return [p for p in model.trainable_params() if id(p) not in ids]


class Segmenter(nn.Cell):
    """A dense model of the ``SEGMENTERS`` registry with the learning-rate groups of the config.

    ``construct(x) -> (logits (N, K, h, w), aux)``, ``aux`` a tuple of auxiliary logit maps
    (AdaptSegNet's layer3 classifier) or ``()``. The wrapper adds no name prefix, so parameter
    names are the network's own. Groups: ``head`` = the network's ``head_params()`` (the
    classifiers, 10x in DeepLab/AdaptSegNet) and ``backbone`` = every other trainable parameter.
    """

    def __init__(self, net, backbone_lr_mult=1.0, head_lr_mult=1.0):
        super().__init__(auto_prefix=False)
        self.net = net
        self.multi_level = bool(getattr(net, "multi_level", False))  # has an auxiliary output (AdaptSegNet's layer3)
        self.backbone_lr_mult, self.head_lr_mult = backbone_lr_mult, head_lr_mult

    def construct(self, x):
        return self.net(x)

    def lr_groups(self):
        head = self.net.head_params()
        return {"backbone": (other_params(self, head), self.backbone_lr_mult), "head": (head, self.head_lr_mult)}


def create_model(cfg_model, in_channels=3, image_size=28):
    """Build a :class:`Classifier` from a ``ModelCfg`` (pretrained weights loaded if given)."""
    kwargs = dict(cfg_model.backbone_kwargs)
    if cfg_model.backbone in SEGMENTERS:
        return create_segmenter(cfg_model, kwargs, in_channels)
    kwargs.setdefault("in_channels", in_channels)
    kwargs.setdefault("image_size", image_size)
    if cfg_model.norm_plugins:
        kwargs["norm_plugins"] = cfg_model.norm_plugins
    backbone = BACKBONES.build(cfg_model.backbone, **kwargs)
    if cfg_model.pretrained:
        from engine.checkpoint import load_backbone_weights

        load_backbone_weights(backbone, cfg_model.pretrained)
    return Classifier(backbone, cfg_model.num_classes, cfg_model.bottleneck_dim, cfg_model.head,
                      cfg_model.backbone_lr_mult, cfg_model.head_lr_mult, cfg_model.head_kwargs)


def create_segmenter(cfg_model, kwargs, in_channels):
    """A :class:`Segmenter` of ``SEGMENTERS[cfg_model.backbone]`` (``model.pretrained`` loads into its encoder)."""
    if cfg_model.bottleneck_dim or cfg_model.head != "linear":
        raise ValueError(f"model.backbone={cfg_model.backbone} is a whole segmentation network: leave "
                         "model.bottleneck_dim at 0 and model.head at linear")
    kwargs.setdefault("in_channels", in_channels)
    if cfg_model.norm_plugins:
        kwargs["norm_plugins"] = cfg_model.norm_plugins
    try:
        net = SEGMENTERS.build(cfg_model.backbone, cfg_model.num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.backbone_kwargs for {cfg_model.backbone}: {err}") from None
    if cfg_model.pretrained:
        from engine.checkpoint import load_backbone_weights

        load_backbone_weights(net.backbone, cfg_model.pretrained)
    return Segmenter(net, cfg_model.backbone_lr_mult, cfg_model.head_lr_mult)
