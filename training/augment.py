"""EDM's non-leaking augmentation pipeline (Karras et al. 2022, appendix C.6).

Each enabled transformation is applied to an image with probability `p * multiplier` and
reports its parameters as augmentation labels (zeros when not applied). The denoiser is
conditioned on these labels, so at sampling time (labels = 0) it produces un-augmented
images. The transformations and their label layout follow EDM and ADA (Karras et al.
2020): pixel blitting, geometric transformations resampled through a 2x upsampled image
with a sym6 wavelet filter, and color transformations.

Random numbers are drawn per image from `rng` (see training.loss.SampleRNG) when given,
else from torch's global generator.
"""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

# Low-pass filter used to upsample before and downsample after geometric transformations:
# the Symlet-6 wavelet's decomposition low-pass coefficients.
_SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
         -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

#----------------------------------------------------------------------------
# Batched homogeneous transformation matrices; every entry is a number or a tensor [N].


def _matrix(rows, n, device):
    """Stack rows of scalars / [N] tensors into a tensor [N, len(rows), len(rows[0])]."""
    entries = [torch.as_tensor(x, dtype=torch.float32, device=device).expand(n) for row in rows for x in row]
    return torch.stack(entries, dim=-1).reshape(n, len(rows), len(rows[0]))


def _translate2d(tx, ty, n, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def _scale2d(sx, sy, n, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def _rotate2d(theta, n, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


def _translate3d(t, n, device):
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], n, device)


def _scale3d(s, n, device):
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], n, device)


def _rotate3d(axis, theta, n, device):
    """Rotation by theta [N] around the unit vector axis (3 floats), Rodrigues' formula."""
    vx, vy, vz = (float(v) for v in axis)
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([
        [vx * vx * cc + c,      vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c,      vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c,      0],
        [0, 0, 0, 1]], n, device)

#----------------------------------------------------------------------------


def _separable_conv(images, taps, axis, stride=1, padding=0):
    """Depthwise 1-D convolution of NCHW images along axis 2 (rows) or 3 (columns)."""
    channels = images.shape[1]
    weight = misc.constant(np.asarray(taps, dtype=np.float32), dtype=images.dtype, device=images.device)
    weight = weight.reshape(1, 1, -1, 1) if axis == 2 else weight.reshape(1, 1, 1, -1)
    weight = weight.tile([channels, 1, 1, 1])
    stride = [stride, 1] if axis == 2 else [1, stride]
    padding = [padding, 0] if axis == 2 else [0, padding]
    return torch.nn.functional.conv2d(images, weight, stride=stride, padding=padding, groups=channels)


def _zero_stuff(images, axis):
    """Insert a zero after every sample along `axis` except the last (2x upsampling before filtering)."""
    stacked = torch.stack([images, torch.zeros_like(images)], dim=axis + 1).flatten(axis, axis + 1)
    return stacked.narrow(axis, 0, stacked.shape[axis] - 1)


@persistence.persistent_class
class AugmentPipe:
    """Augmentations with per-transformation probability multipliers (all 0 = disabled)."""

    def __init__(self, p=1,
        xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
        scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1, aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
    ):
        super().__init__()
        self.p = float(p)                                   # overall probability multiplier
        # Pixel blitting: multipliers, and integer translation range as a fraction of the size.
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)
        # Geometric: multipliers; log2 std of scaling; rotation range (1 = full turn); translation std.
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        # Color: multipliers; brightness std; log2 std of contrast and saturation; hue range.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

    def __call__(self, images, rng=None):
        """Return (augmented images, augmentation labels [N, augment_dim])."""
        N, C, H, W = images.shape
        device = images.device

        def rand(*shape):
            return torch.rand([N, *shape], device=device) if rng is None else rng.rand([N, *shape])

        def randn(*shape):
            return torch.randn([N, *shape], device=device) if rng is None else rng.randn([N, *shape])

        def gate(value, multiplier, *shape):
            """value where this image gets the transformation, else zero."""
            applied = rand(*shape) < multiplier * self.p
            return torch.where(applied, value, torch.zeros_like(value))

        labels = [torch.zeros([N, 0], device=device)]

        # Pixel blitting.
        if self.xflip > 0:
            w = gate(rand(1, 1, 1).mul(2).floor(), self.xflip, 1, 1, 1)
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)
        if self.yflip > 0:
            w = gate(rand(1, 1, 1).mul(2).floor(), self.yflip, 1, 1, 1)
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)
        if self.rotate_int > 0:
            w = gate(rand(1, 1, 1).mul(4).floor(), self.rotate_int, 1, 1, 1)  # quarter turns
            images = torch.where((w == 1) | (w == 2), images.flip(3), images)
            images = torch.where((w == 2) | (w == 3), images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [(w == 1) | (w == 2), (w == 2) | (w == 3)]
        if self.translate_int > 0:
            w = gate(rand(2, 1, 1).mul(2).sub(1), self.translate_int, 1, 1, 1)
            tx = w[:, 0:1].mul(W * self.translate_int_max).round().to(torch.int64)
            ty = w[:, 1:2].mul(H * self.translate_int_max).round().to(torch.int64)
            # Mirror-reflect the shifted coordinates back into the image.
            b, c, y, x = torch.meshgrid(*(torch.arange(s, device=device) for s in images.shape), indexing='ij')
            x = W - 1 - (W - 1 - (x - tx) % (W * 2 - 2)).abs()
            y = H - 1 - (H - 1 - (y + ty) % (H * 2 - 2)).abs()
            images = images.flatten()[((b * C + c) * H + y) * W + x]
            labels += [tx.div(W * self.translate_int_max), ty.div(H * self.translate_int_max)]

        # Geometric transformations, accumulated as the inverse map from output to input pixels.
        eye = torch.eye(3, device=device).expand(N, 3, 3)
        G_inv = eye
        if self.scale > 0:
            w = gate(randn(), self.scale)
            s = w.mul(self.scale_std).exp2()
            G_inv = G_inv @ _scale2d(1 / s, 1 / s, N, device)
            labels.append(w)
        if self.rotate_frac > 0:
            w = gate(rand().mul(2).sub(1).mul(np.pi * self.rotate_frac_max), self.rotate_frac)
            G_inv = G_inv @ _rotate2d(w, N, device)
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            w = gate(randn(), self.aniso)
            r = rand().mul(2).sub(1).mul(np.pi)
            r = torch.where(rand() < self.aniso_rotate_prob, r, torch.zeros_like(r))
            s = w.mul(self.aniso_std).exp2()
            G_inv = G_inv @ _rotate2d(-r, N, device) @ _scale2d(1 / s, s, N, device) @ _rotate2d(r, N, device)
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = gate(randn(2), self.translate_frac, 1)
            G_inv = G_inv @ _translate2d(-w[:, 0] * W * self.translate_frac_std, -w[:, 1] * H * self.translate_frac_std, N, device)
            labels += [w[:, 0], w[:, 1]]
        if G_inv is not eye:
            images = self._resample(images, G_inv)

        # Color transformations, as a 4x4 affine map of RGB in homogeneous coordinates.
        eye4 = torch.eye(4, device=device).expand(N, 4, 4)
        M = eye4
        luma = np.asarray([1, 1, 1]) / np.sqrt(3)
        luma_outer = misc.constant(np.pad(np.outer(luma, luma), [[0, 1], [0, 1]]), device=device)
        if self.brightness > 0:
            w = gate(randn(), self.brightness)
            M = _translate3d(w * self.brightness_std, N, device) @ M
            labels.append(w)
        if self.contrast > 0:
            w = gate(randn(), self.contrast)
            M = _scale3d(w.mul(self.contrast_std).exp2(), N, device) @ M
            labels.append(w)
        if self.lumaflip > 0:
            w = gate(rand(1, 1).mul(2).floor(), self.lumaflip, 1, 1)
            M = (torch.eye(4, device=device) - 2 * luma_outer * w) @ M
            labels.append(w)
        if self.hue > 0:
            w = gate(rand().mul(2).sub(1).mul(np.pi * self.hue_max), self.hue)
            M = _rotate3d(luma, w, N, device) @ M
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = gate(randn(1, 1), self.saturation, 1, 1)
            M = (luma_outer + (torch.eye(4, device=device) - luma_outer) * w.mul(self.saturation_std).exp2()) @ M
            labels.append(w)
        if M is not eye4:
            flat = images.reshape(N, C, H * W)
            if C == 3:
                flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
            elif C == 1:
                # Grayscale: average the RGB rows, apply the summed gain and the offset.
                M = M[:, :3, :].mean(dim=1, keepdim=True)
                flat = flat * M[:, :, :3].sum(dim=2, keepdim=True) + M[:, :, 3:]
            else:
                raise ValueError('color augmentations need RGB (3 channels) or L (1 channel) images')
            images = flat.reshape(N, C, H, W)

        labels = torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1)
        return images, labels

    @staticmethod
    def _resample(images, G_inv):
        """Apply the inverse pixel map G_inv [N, 3, 3] (centred pixel coordinates) to the images."""
        N, C, H, W = images.shape
        device = images.device
        taps = len(_SYM6)
        pad = taps // 4
        cx, cy = (W - 1) / 2, (H - 1) / 2

        # Reflect-pad just enough for the corners of every transformed image, plus filter support.
        corners = misc.constant(np.asarray([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T, device=device)
        corners = (G_inv @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * 4]
        margin = torch.cat([-corners, corners]).max(dim=1).values  # [x0, y0, x1, y1]
        margin = margin + misc.constant([pad * 2 - cx, pad * 2 - cy] * 2, device=device)
        margin = margin.max(misc.constant([0, 0] * 2, device=device))
        margin = margin.min(misc.constant([W - 1, H - 1] * 2, device=device))
        mx0, my0, mx1, my1 = margin.ceil().to(torch.int32).tolist()
        images = torch.nn.functional.pad(images, pad=[mx0, mx1, my0, my1], mode='reflect')
        G_inv = _translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, N, device) @ G_inv

        # Upsample 2x with the wavelet filter.
        up_taps = _SYM6[::-1]
        images = _separable_conv(_zero_stuff(images, 3), up_taps, axis=3, padding=(taps + 1) // 2)
        images = _separable_conv(_zero_stuff(images, 2), up_taps, axis=2, padding=(taps + 1) // 2)
        G_inv = _scale2d(2, 2, N, device) @ G_inv @ _scale2d(0.5, 0.5, N, device)
        G_inv = _translate2d(-0.5, -0.5, N, device) @ G_inv @ _translate2d(0.5, 0.5, N, device)

        # Resample bilinearly into an output with room for the downsampling filter.
        shape = [N, C, (H + pad * 2) * 2, (W + pad * 2) * 2]
        G_inv = _scale2d(2 / images.shape[3], 2 / images.shape[2], N, device) @ G_inv @ _scale2d(shape[3] / 2, shape[2] / 2, N, device)
        grid = torch.nn.functional.affine_grid(theta=G_inv[:, :2, :], size=shape, align_corners=False)
        images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # Downsample 2x with the wavelet filter and crop to the original size.
        images = _separable_conv(images, _SYM6, axis=3, stride=2, padding=(taps - 1) // 2)[:, :, :, pad:-pad]
        images = _separable_conv(images, _SYM6, axis=2, stride=2, padding=(taps - 1) // 2)[:, :, pad:-pad, :]
        return images

#----------------------------------------------------------------------------
