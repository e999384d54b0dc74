"""PyTorch reference pieces shared by the benchmarks and the conversion/parity tests.

Needs torch (only ``bench/`` and tests import it). The ResNet keeps torchvision's module and
parameter names, so its ``state_dict`` is what ``tools/convert_torchvision.py`` converts. The
DeepLab-v2 (:class:`DeepLabV2`) follows AdaptSegNet's ``model/deeplab_multi.py``
(wasidennis/AdaptSegNet) with its module names (``conv1, bn1, layer1..4, layer5`` = classifier on
layer3, ``layer6`` = classifier on layer4, ``conv2d_list``), so its backbone ``state_dict`` is that
of the DeepLab init file without the ``Scale.`` prefix. :class:`DigitScenesNet` is the small
dense net of the embedded DigitScenes benchmark (issue #10).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class GradientReverse(torch.autograd.Function):
    """Gradient reversal layer: identity forward, ``-coeff * grad`` backward (``GradientReverse.apply(x, coeff)``)."""

    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """torchvision-named ResNet. ``forward`` returns the pooled features, or the ``fc`` logits when
    ``num_classes`` is given (then it has an ``fc``, as torchvision's does)."""

    def __init__(self, block, layers, num_classes=None):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = None if num_classes is None else nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(x), 1)
        return features if self.fc is None else self.fc(features)


class DeepLabBottleneck(nn.Module):
    """deeplab_multi.py's Bottleneck: ``style="caffe"`` strides the first 1x1 conv (the official
    code), ``"pytorch"`` the 3x3 (torchvision); the 3x3 is dilated with padding = dilation. BN
    affine parameters are frozen (``requires_grad=False``) as in the official code."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, style="caffe"):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride_3x3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        for bn in (self.bn1, self.bn2, self.bn3):
            bn.requires_grad_(False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + residual)


class DeepLabClassifier(nn.Module):
    """Classifier_Module: 3x3 convs with bias at the given dilation rates (weights N(0, 0.01)), summed.

    ``official_two_rates=True`` reproduces the official forward, whose ``return`` sits inside the
    loop, so only the first two convolutions are summed (AdaptSegNet issues #20, #84)."""

    def __init__(self, inplanes, rates, num_classes, official_two_rates=False):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates)
        for conv in self.conv2d_list:
            conv.weight.data.normal_(0, 0.01)
        self.official_two_rates = official_two_rates

    def forward(self, x):
        convs = list(self.conv2d_list)[:2] if self.official_two_rates else self.conv2d_list
        out = convs[0](x)
        for conv in convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """deeplab_multi.py's ResNetMulti: stem with ceil-mode max-pool, layer3 dilation 2, layer4
    dilation 4 (output stride 8); ``forward`` returns ``(aux, main)`` logits as the official code
    (``aux`` = layer5 on layer3, None when ``multi_level=False``). All convs N(0, 0.01), BN 1/0."""

    RATES = (6, 12, 18, 24)

    def __init__(self, layers, num_classes, style="caffe", official_two_rates=False, multi_level=True):
        super().__init__()
        self.inplanes, self.style = 64, style
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.bn1.requires_grad_(False)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)
        self.layer5 = DeepLabClassifier(1024, self.RATES, num_classes, official_two_rates) if multi_level else None
        self.layer6 = DeepLabClassifier(2048, self.RATES, num_classes, official_two_rates)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4 or dilation in (2, 4):
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
            downsample[1].requires_grad_(False)
        layers = [DeepLabBottleneck(self.inplanes, planes, stride, dilation, downsample, self.style)]
        self.inplanes = planes * 4
        layers += [DeepLabBottleneck(self.inplanes, planes, 1, dilation, None, self.style) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        aux = self.layer5(x) if self.layer5 is not None else None
        return aux, self.layer6(self.layer4(x))


class DigitScenesNet(nn.Module):
    """The DigitScenes dense net (issue #10), PyTorch default init: conv3x3 3->32, ReLU; 3x3
    stride-2 conv to 64, ReLU; 3x3 convs 64->64 at dilation 1, 2, 4, each + ReLU; head = sum of
    3x3 convs 64->K at dilation 1..4; logits upsampled bilinearly (align_corners=True) to the input."""

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            *[m for d in (1, 2, 4) for m in (nn.Conv2d(64, 64, 3, padding=d, dilation=d), nn.ReLU())])
        self.head = nn.ModuleList(nn.Conv2d(64, num_classes, 3, padding=d, dilation=d) for d in (1, 2, 3, 4))

    def forward(self, x):
        f = self.backbone(x)
        logits = sum(conv(f) for conv in self.head)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


class FCDiscriminator(nn.Module):
    """AdaptSegNet's ``model/discriminator.py``: five 4x4 stride-2 convs, LeakyReLU(0.2), no normalisation."""

    def __init__(self, num_classes, ndf=64):
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def convs(self):
        return [self.conv1, self.conv2, self.conv3, self.conv4, self.classifier]

    def forward(self, x):
        for conv in self.convs()[:-1]:
            x = self.leaky_relu(conv(x))
        return self.classifier(x)


def adaptsegnet_iteration(model, discriminators, optimizer, optimizers_d, x_s, y_s, x_t, lambda_seg, lambdas_adv):
    """One iteration of AdaptSegNet's official loop (``train_gta2cityscapes_multi.py``, iter_size 1).

    ``model(x) -> (aux, main)`` as DeeplabMulti (``aux`` None for single-level nets); ``discriminators``
    one per level, main first. G: seg(main) + lambda_seg seg(aux), then the adversarial terms on the
    target with D frozen; D: each level's detached source/target softmax against labels 0/1, halved;
    then every optimizer steps. The learning rates are set by the caller (``lr_poly``). Returns the
    logged values: seg, seg_aux, adv per level, D loss per level.
    """
    optimizer.zero_grad()
    for opt in optimizers_d:
        opt.zero_grad()
    bce = nn.BCEWithLogitsLoss()
    source_label, target_label = 0.0, 1.0

    def levels(x):  # [main, aux] logits upsampled to the input size (official interp, align_corners=True)
        aux, main = model(x)
        outs = [main] + ([aux] if aux is not None else [])
        return [F.interpolate(o, size=x.shape[2:], mode="bilinear", align_corners=True) for o in outs]

    for disc in discriminators:
        disc.requires_grad_(False)
    pred_s = levels(x_s)
    loss_seg = F.cross_entropy(pred_s[0], y_s, ignore_index=255)
    loss_seg_aux = F.cross_entropy(pred_s[1], y_s, ignore_index=255) if len(pred_s) > 1 else torch.zeros(())
    (loss_seg + lambda_seg * loss_seg_aux).backward()
    pred_t = levels(x_t)
    adv = [bce(d(F.softmax(p, dim=1)), torch.full_like(d(F.softmax(p, dim=1)), source_label))
           for d, p in zip(discriminators, pred_t)]
    sum(w * a for w, a in zip(lambdas_adv, adv)).backward()
    for disc in discriminators:
        disc.requires_grad_(True)
    d_losses = []
    for disc, p_s, p_t in zip(discriminators, pred_s, pred_t):
        out_s = disc(F.softmax(p_s.detach(), dim=1))
        loss_s = bce(out_s, torch.full_like(out_s, source_label)) / 2
        loss_s.backward()
        out_t = disc(F.softmax(p_t.detach(), dim=1))
        loss_t = bce(out_t, torch.full_like(out_t, target_label)) / 2
        loss_t.backward()
        d_losses.append(float((loss_s + loss_t).detach()))
    optimizer.step()
    for opt in optimizers_d:
        opt.step()
    return [float(v.detach()) for v in [loss_seg, loss_seg_aux, *adv]] + d_losses


# --------------------------------------------------------------------------- classification methods (issue #11)
# Written from TLlib (thuml/Transfer-Learning-Library): tllib/modules/{grl,domain_discriminator,classifier}.py,
# tllib/alignment/{dann,cdan}.py, tllib/self_training/mcc.py and the training loop and optimizer of
# examples/domain_adaptation/image_classification/{dann,cdan,mcc}.py; ADDA's adapt step from
# corenel/pytorch-adda core/adapt.py. Used by tests/test_parity_torch.py, tests/test_adda.py and
# bench/peer_tllib.py.
class LeNet(nn.Module):
    """The DANN paper's LeNet of ``models/lenet.py``: conv5-32, pool, conv5-48, pool, fc100, fc100 (ReLUs)."""

    def __init__(self, in_channels=3, image_size=28, feature_dim=100):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
                                  nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc = nn.Sequential(nn.Linear(48 * side * side, feature_dim), nn.ReLU(),
                                nn.Linear(feature_dim, feature_dim), nn.ReLU())
        self.out_features = feature_dim

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class ImageClassifier(nn.Module):
    """TLlib's ``Classifier``: backbone -> bottleneck (Linear-BN1d-ReLU, or none) -> Linear head.

    ``forward`` returns ``(predictions, features)``; :meth:`get_parameters` gives TLlib's groups
    (backbone at ``backbone_lr_mult`` x base_lr, 0.1 when fine-tuning; bottleneck and head at 1x).
    """

    def __init__(self, backbone, num_classes, bottleneck_dim=0, backbone_lr_mult=0.1, out_features=None):
        super().__init__()
        self.backbone = backbone
        feat = out_features or backbone.out_features
        if bottleneck_dim > 0:
            self.bottleneck = nn.Sequential(nn.Linear(feat, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
            self.features_dim = bottleneck_dim
        else:
            self.bottleneck, self.features_dim = nn.Identity(), feat
        self.head = nn.Linear(self.features_dim, num_classes)
        self.backbone_lr_mult = backbone_lr_mult

    def forward(self, x):
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f

    def get_parameters(self, base_lr=1.0):
        return [{"params": self.backbone.parameters(), "lr": self.backbone_lr_mult * base_lr},
                {"params": self.bottleneck.parameters(), "lr": base_lr},
                {"params": self.head.parameters(), "lr": base_lr}]


class DomainDiscriminator(nn.Sequential):
    """TLlib's DomainDiscriminator: Linear-BN-ReLU x2 -> Linear -> Sigmoid (``batch_norm=True``), or
    Linear-ReLU-Dropout x2 (``batch_norm=False``; TLlib's dropout is 0.5, ``dropout=0`` drops it).
    ``sigmoid=False`` returns the logit (ADDA's critic, trained with BCE on logits)."""

    def __init__(self, in_feature, hidden_size, batch_norm=True, dropout=0.5, sigmoid=True):
        layers, width = [], in_feature
        for _ in range(2):
            layers.append(nn.Linear(width, hidden_size))
            if batch_norm:
                layers += [nn.BatchNorm1d(hidden_size), nn.ReLU()]
            else:
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            width = hidden_size
        final = [nn.Linear(hidden_size, 1)] + ([nn.Sigmoid()] if sigmoid else [])
        super().__init__(*layers, nn.Sequential(*final))

    def get_parameters(self):
        return [{"params": self.parameters(), "lr": 1.0}]


class WarmStartGradientReverseLayer(nn.Module):
    """TLlib's GRL: ``coeff = 2 (hi - lo) / (1 + exp(-alpha i / max_iters)) - (hi - lo) + lo``,
    i = forward calls so far."""

    def __init__(self, alpha=1.0, lo=0.0, hi=1.0, max_iters=1000, auto_step=True):
        super().__init__()
        self.alpha, self.lo, self.hi, self.max_iters, self.auto_step = alpha, lo, hi, max_iters, auto_step
        self.iter_num = 0
        self.last_coeff = 0.0

    def forward(self, x):
        span = self.hi - self.lo
        self.last_coeff = float(2.0 * span / (1.0 + math.exp(-self.alpha * self.iter_num / self.max_iters))
                                - span + self.lo)
        if self.auto_step:
            self.iter_num += 1
        return GradientReverse.apply(x, self.last_coeff)


def binary_accuracy(prob, target):
    """TLlib ``binary_accuracy`` as a fraction: ``prob >= 0.5`` against 0/1 targets."""
    return float(((prob >= 0.5).float() == target).float().mean())


class DomainAdversarialLoss(nn.Module):
    """TLlib's DANN loss: ``0.5 (BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0))``; keeps the domain accuracy."""

    def __init__(self, discriminator, grl):
        super().__init__()
        self.grl, self.domain_discriminator = grl, discriminator
        self.domain_discriminator_accuracy = None

    def forward(self, f_s, f_t):
        d = self.domain_discriminator(self.grl(torch.cat((f_s, f_t), 0)))
        d_s, d_t = d.chunk(2, dim=0)
        one, zero = torch.ones_like(d_s), torch.zeros_like(d_t)
        self.domain_discriminator_accuracy = 0.5 * (binary_accuracy(d_s, one) + binary_accuracy(d_t, zero))
        return 0.5 * (F.binary_cross_entropy(d_s, one) + F.binary_cross_entropy(d_t, zero))


class ConditionalDomainAdversarialLoss(nn.Module):
    """TLlib's CDAN loss on ``T(f, softmax(g).detach())`` (multilinear, or randomized with ``R_f, R_g``).

    Entropy conditioning weights ``w = 1 + exp(-H(p))``. ``entropy_norm="batch"`` is TLlib's
    normalisation (w scaled to sum to the whole batch 2N); ``"domain"`` is the CDAN authors'
    (thuml/CDAN ``loss.py``: each domain's weights scaled to sum to that domain's size N).
    """

    def __init__(self, discriminator, grl, entropy_conditioning=False, R_f=None, R_g=None,  # noqa: N803
                 entropy_norm="batch"):
        super().__init__()
        self.domain_discriminator, self.grl = discriminator, grl
        self.entropy_conditioning, self.entropy_norm = entropy_conditioning, entropy_norm
        self.R_f, self.R_g = R_f, R_g
        self.domain_discriminator_accuracy = None

    def map(self, f, g):
        if self.R_f is None:
            return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).view(f.size(0), -1)
        return torch.mm(f, self.R_f) * torch.mm(g, self.R_g) / math.sqrt(float(self.R_f.shape[1]))

    def forward(self, g_s, f_s, g_t, f_t):
        f = torch.cat((f_s, f_t), 0)
        g = F.softmax(torch.cat((g_s, g_t), 0), dim=1).detach()
        d = self.domain_discriminator(self.grl(self.map(f, g)))
        label = torch.cat((torch.ones((g_s.size(0), 1)), torch.zeros((g_t.size(0), 1))))
        self.domain_discriminator_accuracy = binary_accuracy(d, label)
        if not self.entropy_conditioning:
            return F.binary_cross_entropy(d, label)
        weight = 1.0 + torch.exp(-(-(g * torch.log(g + 1e-5)).sum(dim=1)))  # TLlib's entropy() uses eps 1e-5
        if self.entropy_norm == "batch":
            weight = weight / weight.sum() * f.size(0)
        else:
            n = g_s.size(0)
            weight = torch.cat((weight[:n] / weight[:n].sum() * n, weight[n:] / weight[n:].sum() * (f.size(0) - n)))
        return F.binary_cross_entropy(d, label, weight.view_as(d))


class MinimumClassConfusionLoss(nn.Module):
    """TLlib's MCC loss (Jin et al., ECCV 2020) at temperature T on target logits (N, C)."""

    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, logits):
        batch_size, num_classes = logits.shape
        p = F.softmax(logits / self.temperature, dim=1)
        w = 1.0 + torch.exp(-(-(p * torch.log(p + 1e-5)).sum(dim=1)).detach())
        w = (batch_size * w / w.sum()).unsqueeze(1)
        confusion = torch.mm((p * w).transpose(1, 0), p)
        confusion = confusion / torch.sum(confusion, dim=1)
        return (confusion.sum() - torch.trace(confusion)) / num_classes


def inverse_decay_sgd(param_groups, lr, momentum, weight_decay, nesterov, lr_gamma, lr_power):
    """TLlib's optimizer: SGD over groups whose ``lr`` is a multiplier, and
    ``LambdaLR(lambda x: lr * (1 + gamma x) ** -power)``, stepped once after every ``optimizer.step()``."""
    optimizer = torch.optim.SGD(param_groups, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: lr * (1.0 + lr_gamma * float(x)) ** -lr_power)
    return optimizer, scheduler


def tllib_iteration(model, optimizer, scheduler, x_s, y_s, x_t=None, transfer=None, trade_off=1.0):
    """One iteration of TLlib's ``train()`` loop: one forward of ``cat(x_s, x_t)``, CE on the source
    half + ``trade_off`` x ``transfer(g_s, f_s, g_t, f_t)`` (TLlib's ``y_s, f_s, y_t, f_t``: logits and
    features), one SGD step, one scheduler step.

    ``transfer`` returns ``(loss, domain accuracy or None)``; source-only passes ``x_t=None``.
    Returns ``{"loss", "cls", "acc_s", "transfer", "d_acc"}`` (the latter two only with ``transfer``).
    """
    g, f = model(x_s if x_t is None else torch.cat((x_s, x_t), 0))
    n = x_s.size(0)
    g_s, f_s, g_t, f_t = g[:n], f[:n], g[n:], f[n:]
    cls = F.cross_entropy(g_s, y_s)
    logged = {"cls": float(cls.detach()), "acc_s": float((g_s.argmax(1) == y_s).float().mean())}
    loss = cls
    if transfer is not None:
        transfer_loss, d_acc = transfer(g_s, f_s, g_t, f_t)
        loss = cls + trade_off * transfer_loss
        logged["transfer"] = float(transfer_loss.detach())
        if d_acc is not None:
            logged["d_acc"] = d_acc
    logged["loss"] = float(loss.detach())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return logged


def adda_adapt_iteration(source_encoder, target_encoder, critic, opt_critic, opt_target, x_s, x_t):
    """One iteration of pytorch-adda's ``train_tgt`` (core/adapt.py) with a one-logit critic and BCE.

    The critic learns source = 1, target = 0 on detached features; then the target encoder is
    updated (a fresh forward) so the updated critic calls its features source (inverted label 1).
    The source encoder is whatever mode the caller left it in (pytorch-adda: eval, from ``eval_src``).
    Returns ``{"d_loss", "d_acc", "adv_loss"}``.
    """
    bce = nn.BCEWithLogitsLoss()
    opt_critic.zero_grad()
    with torch.no_grad():
        f_s = source_encoder(x_s)
    f_t = target_encoder(x_t)
    d = critic(torch.cat((f_s, f_t), 0).detach()).squeeze(-1)
    label = torch.cat((torch.ones(f_s.size(0)), torch.zeros(f_t.size(0))))
    d_loss = bce(d, label)
    d_loss.backward()
    opt_critic.step()
    d_acc = float(((d > 0).float() == label).float().mean())
    opt_critic.zero_grad()
    opt_target.zero_grad()
    d_t = critic(target_encoder(x_t)).squeeze(-1)
    adv_loss = bce(d_t, torch.ones_like(d_t))
    adv_loss.backward()
    opt_target.step()
    return {"d_loss": float(d_loss.detach()), "d_acc": d_acc, "adv_loss": float(adv_loss.detach())}


# --------------------------------------------------------------------------- SymNets (issue #13)
# Written from the official code, Gorilla-Lab-SCUT/SymNets: symnets/trainer.py (train, adjust_learning_rate),
# symnets/models/{DomainClassifierSource,DomainClassifierTarget,EntropyMinimizationPrinciple}.py and the SGD of
# symnets/main.py (groups named 'pre-trained' / 'new-added', momentum, weight decay, Nesterov). Used by
# tests/test_symnets.py.
def _symnets_log_mass(prob):
    """The official criteria's ``log(sum of probabilities)``, with 1e-6 added only where the sum is exactly 0."""
    return (prob + (prob == 0).float() * 1e-6).log()


def symnets_source_discrimination(output, num_classes):
    """DClassifierForSource: ``-mean log P_s``, P_s = the 2K-softmax mass on the first K logits."""
    return -_symnets_log_mass(F.softmax(output, dim=1)[:, :num_classes].sum(1)).mean()


def symnets_target_discrimination(output, num_classes):
    """DClassifierForTarget: ``-mean log P_t``, P_t = the 2K-softmax mass on the last K logits."""
    return -_symnets_log_mass(F.softmax(output, dim=1)[:, num_classes:].sum(1)).mean()


def symnets_target_entropy(output, num_classes):
    """EMLossForTarget: ``-mean sum_k q_k log q_k`` with ``q_k = p_k + p_{k+K}``."""
    prob = F.softmax(output, dim=1)
    q = prob[:, :num_classes] + prob[:, num_classes:]
    return -(_symnets_log_mass(q) * q).sum(1).mean()


def symnets_lambda(progress):
    """The official ``lam = 2 / (1 + exp(-10 epoch / epochs)) - 1``, with ``progress = epoch / epochs``."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def symnets_adjust_learning_rate(optimizer, lr, progress):
    """The official annealing: ``lr / (1 + 10 p)^0.75`` for 'new-added' groups, a tenth of it for 'pre-trained'."""
    decay = (1.0 + 10.0 * progress) ** 0.75
    for group in optimizer.param_groups:
        group["lr"] = (0.1 * lr if group["name"] == "pre-trained" else lr) / decay


def symnets_iteration(model, optimizer, classifier_params, x_s, y_s, x_t, num_classes, progress, entropy=True):
    """One iteration of the official ``train()`` (flag ``symnet``, or ``no_em`` with ``entropy=False``).

    ``model(x) -> (N, 2K)`` logits (any callable; ``optimizer`` holds all its parameters, as the official SGD
    does). Source and target batches go through the model separately; the classifier loss and the feature
    loss are backpropagated one after the other; parameters in ``classifier_params`` (the official
    ``count >= 159``: the fc) keep the classifier loss's gradient, all others the feature loss's; then one
    ``optimizer.step()``. Returns the logged values (accuracies as fractions).
    """
    k = num_classes
    out_s = model(x_s)
    task_s = F.cross_entropy(out_s[:, :k], y_s)
    task_t = F.cross_entropy(out_s[:, k:], y_s)
    disc_s = symnets_source_discrimination(out_s, k)
    category = 0.5 * F.cross_entropy(out_s, y_s) + 0.5 * F.cross_entropy(out_s, y_s + k)
    out_t = model(x_t)
    disc_t = symnets_target_discrimination(out_t, k)
    domain_conf = 0.5 * symnets_target_discrimination(out_t, k) + 0.5 * symnets_source_discrimination(out_t, k)
    entropy_t = symnets_target_entropy(out_t, k)
    lam = symnets_lambda(progress)
    loss_classifier = task_s + task_t + disc_s + disc_t
    loss_g = category + lam * (domain_conf + entropy_t if entropy else domain_conf)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad()
    loss_classifier.backward(retain_graph=True)
    grads_classifier = [None if p.grad is None else p.grad.clone() for p in params]
    optimizer.zero_grad()
    loss_g.backward()
    fc = {id(p) for p in classifier_params}
    for param, grad_c in zip(params, grads_classifier):
        if id(param) in fc:
            param.grad = grad_c
    optimizer.step()
    logged = {"cls_loss": loss_classifier, "feat_loss": loss_g, "task_s": task_s, "task_t": task_t,
              "domain_disc": disc_s + disc_t, "category": category, "domain_conf": domain_conf, "entropy": entropy_t}
    logged = {key: float(value.detach()) for key, value in logged.items()}
    logged.update(loss=logged["cls_loss"] + logged["feat_loss"], lam=lam,
                  acc_cs=float((out_s[:, :k].argmax(1) == y_s).float().mean()),
                  acc_ct=float((out_s[:, k:].argmax(1) == y_s).float().mean()))
    return logged
