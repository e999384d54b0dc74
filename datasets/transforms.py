"""Batch transforms on NHWC float32 images in [0, 1]: ``fn(images, rng) -> images``.

Training transforms draw from the numpy ``rng`` they are given (seeded per iteration by the
batch stream), evaluation passes ``rng=None`` and must be deterministic. Normalisation is the
last step of every transform.
"""
import numpy as np

from engine.registry import Registry

TRANSFORMS = Registry("transform")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe-trained weights (DeepLab's init, AdaptSegNet): BGR on the 0-255 scale minus this mean, as
# (x[..., ::-1] - mean / 255) / (1 / 255) on our [0, 1] RGB images
CAFFE_BGR_MEAN = tuple(v / 255.0 for v in (104.00698793, 116.66876762, 122.67891434))
CAFFE_BGR_STD = (1.0 / 255.0,) * 3


def normalizer(mean, std):
    mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    return lambda images: (images - mean) / std


def match_channels(images, channels):
    if images.shape[-1] == channels:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and images.shape[-1] == 3:
        return images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    raise ValueError(f"cannot convert {images.shape[-1]} channels to {channels}")


@TRANSFORMS.register("none")
@TRANSFORMS.register("center_crop")
def center_crop(images, rng, size):
    """No augmentation: only a centre crop when the domain stores images larger than ``size``."""
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


@TRANSFORMS.register("identity")
def identity(images, rng, size):
    """Images as the domain gives them (segmentation: the domain resized them, label maps stay aligned)."""
    return images


@TRANSFORMS.register("flip_crop")
def flip_crop(images, rng, size):
    """Random crop of ``size`` (after the domain resized to ``resize_size``) and horizontal flip."""
    if rng is None:
        return center_crop(images, rng, size)
    n, h, w = images.shape[:3]
    out = np.empty((n, size, size, images.shape[3]), np.float32)
    tops = rng.integers(0, h - size + 1, n)
    lefts = rng.integers(0, w - size + 1, n)
    flips = rng.random(n) < 0.5
    for i in range(n):
        crop = images[i, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


@TRANSFORMS.register("pad_crop_flip")
def pad_crop_flip(images, rng, size):
    """The CIFAR training view (torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``, as
    CrossNorm/SelfNorm's ``cifar.py``): zero-pad 4 px (black, before normalisation), random ``size`` crop, flip
    (p 0.5). Eval (``rng=None``) leaves the images as they are (a centre crop when larger)."""
    if rng is None:
        return center_crop(images, rng, size)
    pad = 4
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return flip_crop(padded, rng, size)


@TRANSFORMS.register("digits_strong")
def digits_strong(images, rng, size):
    """Strong view for small digits: shift +-3 px, contrast/brightness jitter, noise, cutout."""
    if rng is None:
        return images
    n, h, w, c = images.shape
    pad = 3
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    contrast = rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
    bright = rng.uniform(-0.2, 0.2, (n, 1, 1, 1)).astype(np.float32)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * contrast + mean + bright
    out = out + rng.normal(0, 0.05, out.shape).astype(np.float32)
    side = max(1, h // 4)
    cy, cx = rng.integers(0, h - side + 1, n), rng.integers(0, w - side + 1, n)
    for i in range(n):
        out[i, cy[i]:cy[i] + side, cx[i]:cx[i] + side] = 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def build_transform(name, size, channels, mean, std, bgr=False):
    """Compose channel matching, the named augmentation and normalisation (after RGB -> BGR with ``bgr``)."""
    augment = TRANSFORMS.get(name)
    norm = normalizer(mean, std)

    def transform(images, rng):
        images = augment(match_channels(np.asarray(images, np.float32), channels), rng, size)
        return norm(images[..., ::-1] if bgr else images).astype(np.float32, copy=False)

    return transform


def _crop_boxes(rng, n, h, w, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision ``RandomResizedCrop.get_params`` for ``n`` images at once: (tops, lefts, heights, widths)."""
    area = h * w * rng.uniform(*scale, (n, attempts))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, attempts)))
    cw, ch = np.rint(np.sqrt(area * aspect)).astype(int), np.rint(np.sqrt(area / aspect)).astype(int)
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.argmax(axis=1)
    widths, heights = cw[np.arange(n), first], ch[np.arange(n), first]
    # fallback when no attempt fits: the whole image, clamped to the ratio range (torchvision's)
    fw, fh = w, h
    if w / h < ratio[0]:
        fh = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        fw = int(round(h * ratio[1]))
    none_ok = ~ok.any(axis=1)
    widths[none_ok], heights[none_ok] = fw, fh
    tops = (rng.random(n) * (h - heights + 1)).astype(int)
    lefts = (rng.random(n) * (w - widths + 1)).astype(int)
    tops[none_ok], lefts[none_ok] = (h - fh) // 2, (w - fw) // 2
    return tops, lefts, heights, widths


def _sample_grid(starts, lengths, size):
    """Bilinear source coordinates (half-pixel centres) of ``size`` outputs over each crop: lo, hi, frac."""
    pos = (np.arange(size) + 0.5)[None] * (lengths[:, None] / size) - 0.5
    pos = np.clip(pos, 0, lengths[:, None] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, lengths[:, None] - 1)
    return starts[:, None] + lo, starts[:, None] + hi, (pos - lo).astype(np.float32)


@TRANSFORMS.register("imagenet")
def imagenet(images, rng, size):
    """RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip; center crop at eval.

    Crops of all images are drawn at once and resized bilinearly in one vectorised gather.
    """
    if rng is None:
        return center_crop(images, rng, size)
    n, h, w = images.shape[:3]
    tops, lefts, heights, widths = _crop_boxes(rng, n, h, w)
    y0, y1, fy = _sample_grid(tops, heights, size)
    x0, x1, fx = _sample_grid(lefts, widths, size)
    flips = rng.random(n) < 0.5
    x0[flips], x1[flips], fx[flips] = x0[flips, ::-1], x1[flips, ::-1], fx[flips, ::-1]
    return _bilinear_gather(images, (y0, y1, fy), (x0, x1, fx))


def _bilinear_gather(images, rows_grid, cols_grid):
    """(N, h, w, C) bilinear samples of ``images`` at per-image grids ``(lo, hi, frac)`` of :func:`_sample_grid`."""
    (y0, y1, fy), (x0, x1, fx) = rows_grid, cols_grid
    batch = np.arange(len(images))[:, None, None]
    fy, fx = fy[:, :, None, None], fx[:, None, :, None]

    def rows(y):
        y = y[:, :, None]
        return images[batch, y, x0[:, None, :]] * (1 - fx) + images[batch, y, x1[:, None, :]] * fx

    return (rows(y0) * (1 - fy) + rows(y1) * fy).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- OCR's strong view
def _resize_bilinear(images, height, width):
    """Bilinear resize (half-pixel centres) of (N, H, W, C) to (N, height, width, C)."""
    n, h, w = images.shape[:3]
    full = np.zeros(n, int)
    return _bilinear_gather(images, _sample_grid(full, np.full(n, h), height), _sample_grid(full, np.full(n, w), width))


def _grayscale(images):
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale: (N, H, W, 3) -> (N, H, W, 1)."""
    return images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]


def _rgb_to_hsv(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(-1), rgb.min(-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6.0, np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(chroma > 0, hue / 6.0, 0.0)
    sat = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return hue, sat, high


def _hsv_to_rgb(hue, sat, value):
    k = (np.stack([5.0, 3.0, 1.0], -1) + hue[..., None] * 6.0) % 6.0
    return value[..., None] - value[..., None] * sat[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _blend(image, other, factor):
    return np.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def _color_jitter(image, rng, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
    """torchvision ColorJitter(0.4, 0.4, 0.4, 0.1) on one (H, W, 3) image: the four adjustments in random order."""
    factors = {"brightness": rng.uniform(1 - brightness, 1 + brightness),
               "contrast": rng.uniform(1 - contrast, 1 + contrast),
               "saturation": rng.uniform(1 - saturation, 1 + saturation), "hue": rng.uniform(-hue, hue)}
    for op in rng.permutation(["brightness", "contrast", "saturation", "hue"]):
        f = factors[op]
        if op == "hue" and hue == 0:  # drawn all the same, so the random stream does not depend on hue
            continue
        if op == "brightness":
            image = _blend(image, 0.0, f)
        elif op == "contrast":
            image = _blend(image, _grayscale(image[None])[0].mean(), f)
        elif op == "saturation":
            image = _blend(image, _grayscale(image[None])[0], f)
        else:
            h, s, v = _rgb_to_hsv(image)
            image = _hsv_to_rgb((h + f) % 1.0, s, v)
    return image.astype(np.float32)


def _gaussian_blur(image, sigma, kernel_size=21):
    """Separable Gaussian blur with reflect padding (torchvision GaussianBlur): (H, W, C) -> (H, W, C)."""
    half = kernel_size // 2
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    rows = sum(taps[k] * padded[k:k + h] for k in range(kernel_size))
    return sum(taps[k] * rows[:, k:k + w] for k in range(kernel_size)).astype(np.float32)


def _flip_translate(images, rng, size):
    """Dassl's ``random_flip`` + ``random_translation`` on (N, size, size, C) images, in place where possible:
    horizontal flip (p 0.5), and with p 0.5 a resize to ``round(1.125 size)`` and a random ``size`` crop."""
    n = images.shape[0]
    flips = rng.random(n) < 0.5
    images[flips] = images[flips, :, ::-1]
    big = int(round(size * 1.125))
    translate = rng.random(n) < 0.5
    if translate.any():
        enlarged = _resize_bilinear(images[translate], big, big)
        tops, lefts = rng.integers(0, big - size + 1, (2, len(enlarged)))
        images[translate] = np.stack([e[t:t + size, l:l + size] for e, t, l in zip(enlarged, tops, lefts)])
    return images


@TRANSFORMS.register("flip_translate")
def flip_translate(images, rng, size):
    """Dassl's DG training view (``INPUT.TRANSFORMS: [random_flip, random_translation, normalize]``, the official
    OCR PACS config): resize to ``size``, flip (p 0.5), translation by a resize to 1.125x and a random crop
    (p 0.5). Eval (``rng=None``) is the plain resize."""
    images = _resize_bilinear(images, size, size)
    return images if rng is None else _flip_translate(images, rng, size)


@TRANSFORMS.register("ocr_strong")
def ocr_strong(images, rng, size):
    """OCR's content-preserving strong view (official code: Dassl ``build_transform`` with
    ``[colorjitter, randomgrayscale, gaussian_blur, random_flip, random_translation]``, Dassl defaults):

    resize to ``size``; horizontal flip (p 0.5); with p 0.5 resize to ``round(1.125 size)`` and take a
    random ``size`` crop (a translation of at most 1/8 of the side); ColorJitter(0.4, 0.4, 0.4, 0.1);
    grayscale (p 0.2); Gaussian blur, kernel 21, sigma ~ U(0.1, 2) (p 0.5). No resized crop: the object
    stays whole, so the residual OCR maximises the entropy of holds no class content.
    Images (N, H, W, 3) in [0, 1]; eval (``rng=None``) is the plain resize.
    """
    images = _resize_bilinear(images, size, size)
    if rng is None:
        return images
    images = _flip_translate(images, rng, size)
    n = images.shape[0]
    out = np.empty_like(images)
    for i in range(n):
        image = _color_jitter(images[i], rng) if images.shape[-1] == 3 else images[i]
        if rng.random() < 0.2:
            image = np.repeat(_grayscale(image[None])[0], image.shape[-1], -1)
        if rng.random() < 0.5:
            image = _gaussian_blur(image, rng.uniform(0.1, 2.0))
        out[i] = image
    return out


# --------------------------------------------------------------------------- PAC's strong view (RandAugment)
def _affine(image, matrix, fill=0.0):
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))`` with nearest sampling: output (x, y) reads input
    ``(a x + b y + c, d x + e y + f)``; pixels from outside the image are ``fill``."""
    a, b, c, d, e, f = matrix
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    src_x = np.floor(a * xs + b * ys + c + 0.5).astype(int)  # PIL NEAREST: centre of the mapped pixel
    src_y = np.floor(d * xs + e * ys + f + 0.5).astype(int)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    out = np.full_like(image, fill)
    out[inside] = image[src_y[inside], src_x[inside]]
    return out


def _equalize(image):
    """PIL ``ImageOps.equalize`` per channel on the 0-255 scale."""
    q = np.clip(np.round(image * 255.0), 0, 255).astype(np.int64)
    out = np.empty_like(image)
    for ch in range(image.shape[-1]):
        hist = np.bincount(q[..., ch].ravel(), minlength=256)
        used = hist[hist > 0]
        step = (hist.sum() - used[-1]) // 255
        if step == 0:
            out[..., ch] = image[..., ch]
            continue
        lut = np.minimum((step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step, 255)
        out[..., ch] = lut[q[..., ch]] / 255.0
    return out


def _smooth(image):
    """PIL's SMOOTH kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` (``ImageEnhance.Sharpness``), border kept."""
    out = image.copy()
    h, w = image.shape[:2]
    acc = sum(image[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) \
        + 4 * image[1:-1, 1:-1]
    out[1:-1, 1:-1] = acc / 13.0
    return out


def _signed(rng, value):
    return -value if rng.random() < 0.5 else value


def _rand_augment_op(image, rng, name, v):
    """One op of FixMatch's pool (PAC ``utils/transforms.py`` ``fixmatch_augment_pool``) at level v in 1..9."""
    h, w = image.shape[:2]
    level = v / 10.0  # _float_parameter(v, max_v) = v * max_v / PARAMETER_MAX
    gray = _grayscale(image[None])[0] if image.shape[-1] == 3 else image
    if name == "auto_contrast":
        low, high = image.min(axis=(0, 1), keepdims=True), image.max(axis=(0, 1), keepdims=True)
        return np.where(high > low, (image - low) / np.where(high > low, high - low, 1.0), image)
    if name == "brightness":
        return _blend(image, 0.0, level * 0.9 + 0.05)
    if name == "color":
        return _blend(image, gray, level * 0.9 + 0.05)
    if name == "contrast":
        return _blend(image, gray.mean(), level * 0.9 + 0.05)
    if name == "equalize":
        return _equalize(image)
    if name == "posterize":
        bits = int(v * 4 / 10) + 4
        shift = 8 - bits
        return ((np.round(image * 255.0).astype(np.int64) >> shift) << shift) / 255.0
    if name == "rotate":
        angle = np.deg2rad(_signed(rng, int(v * 30 / 10)))
        cos, sin = np.cos(angle), np.sin(angle)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        return _affine(image, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))
    if name == "sharpness":
        return _blend(image, _smooth(image), level * 0.9 + 0.05)
    if name == "shear_x":
        return _affine(image, (1, _signed(rng, level * 0.3), 0, 0, 1, 0))
    if name == "shear_y":
        return _affine(image, (1, 0, 0, _signed(rng, level * 0.3), 1, 0))
    if name == "solarize":
        threshold = 256 - int(v * 256 / 10)
        return np.where(np.round(image * 255.0) >= threshold, 1.0 - image, image)
    if name == "translate_x":
        return _affine(image, (1, 0, int(_signed(rng, level * 0.3) * w), 0, 1, 0))
    if name == "translate_y":
        return _affine(image, (1, 0, 0, 0, 1, int(_signed(rng, level * 0.3) * h)))
    return image  # identity


RAND_AUGMENT_POOL = ("auto_contrast", "brightness", "color", "contrast", "equalize", "identity", "posterize",
                     "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")


def rand_augment(image, rng, n=2, m=10, cutout=16 / 224):
    """PAC's ``RandAugmentMC(n=2, m=10)``: n ops drawn with replacement from the FixMatch pool, level
    ``v ~ randint(1, m)``, each applied with probability 0.5, then a grey (0.5) Cutout square of side
    ``cutout`` x the image side (16 px of 224 in PAC). One (H, W, C) image in [0, 1]."""
    for op in rng.choice(len(RAND_AUGMENT_POOL), n):
        v = int(rng.integers(1, m))
        if rng.random() < 0.5:
            image = np.clip(_rand_augment_op(image, rng, RAND_AUGMENT_POOL[op], v), 0.0, 1.0).astype(np.float32)
    h, w = image.shape[:2]
    side = max(1, int(round(cutout * min(h, w))))
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    x0, y0 = int(max(0, x0 - side / 2.0)), int(max(0, y0 - side / 2.0))
    image = image.copy()
    image[y0:min(h, y0 + side), x0:min(w, x0 + side)] = 0.5
    return image


@TRANSFORMS.register("randaugment")
def randaugment(images, rng, size):
    """PAC's strong view (``aug_level=3``): random crop + flip where the domain stores images larger than
    ``size`` (file domains; digits stay whole and unflipped), RandAugment (n 2, m 10) + Cutout, then
    ColorJitter(0.4, 0.4, 0.4, 0.1) with probability 0.8. Eval (``rng=None``): the centre crop."""
    if rng is None:
        return center_crop(images, rng, size)
    images = flip_crop(images, rng, size) if images.shape[1] > size or images.shape[2] > size else \
        np.array(images, np.float32)
    out = np.empty_like(images)
    for i in range(len(images)):
        image = rand_augment(images[i], rng)
        if image.shape[-1] == 3 and rng.random() < 0.8:
            image = _color_jitter(image, rng)
        out[i] = image
    return out


@TRANSFORMS.register("digits_dg_aug")
def digits_dg_aug(images, rng, size):
    """The content-preserving augmentation of the optdigits-DG recipe (issue #17), no flip (a mirrored digit
    is another digit): integer shift of up to +-2 px (edge pixels repeat: the inverted domain's background is
    white), ColorJitter(brightness 0.4, contrast 0.4, saturation 0.4) in random order, grayscale (p 0.2),
    Gaussian blur with a 5x5 kernel, sigma ~ U(0.1, 2) (p 0.5). Images (N, H, W, 3) in [0, 1]; eval
    (``rng=None``) leaves them unchanged. ERM+Aug trains on it (``data.train_transform``), OCR takes it as its
    strong view (``data.strong_transform``).
    """
    if rng is None:
        return images
    n, h, w = images.shape[:3]
    pad = 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, (2, n))
    out = np.empty_like(images)
    for i in range(n):
        image = _color_jitter(padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w], rng, hue=0.0)
        if rng.random() < 0.2:
            image = np.repeat(_grayscale(image[None])[0], image.shape[-1], -1)
        if rng.random() < 0.5:
            image = _gaussian_blur(image, rng.uniform(0.1, 2.0), kernel_size=5)
        out[i] = image
    return out
