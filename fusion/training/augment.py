"""Training-time augmentation of the cached encoder inputs: log-mel spectrograms and face crops (clips and the
face expert's still images).

Both functions take padded batches on any device and draw every random number from the ``generator`` passed in
(on the generator's own device, so one CPU generator gives the same draws for data on the CPU or a GPU), which
makes a run reproducible from its seed. Padded frames and absent faces are never changed.

The audio ops work on the natural-log mel power of encoders.audio.log_mel, where the waveform-level ops of the
literature have exact or close counterparts, so the feature cache needs no waveforms:

- speed: each example's real frames are resampled in time (a tempo change; pitch is left alone, see _speed)
- gain: exact, g dB adds g * ln(10) / 10 to every log power
- noise: white Gaussian noise at a random SNR, added in the power domain (see _add_noise)
- SpecAugment: time and frequency stripes set to the example's mean log-mel, last, as in the paper
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from encoders.audio import LOG_FLOOR, N_MELS, mel_filters

DB_TO_LOG_POWER = math.log(10) / 10  # natural-log power per dB
# (N_FFT // 2 + 1, N_MELS) the filterbank of encoders.audio.log_mel (librosa's defaults: Slaney mel scale and
# area normalisation), scaled so that white noise of unit power per FFT bin gives a mean of 1 over the mel bands.
# Area normalisation makes every band sum about the same weight, so white noise is flat to within 9% across bands.
_WHITE_NOISE_TO_MEL = torch.from_numpy(mel_filters()).T
_WHITE_NOISE_TO_MEL = _WHITE_NOISE_TO_MEL / _WHITE_NOISE_TO_MEL.sum(0).mean()


@dataclass
class AugmentConfig:
    enabled: bool = True
    # audio, in the order applied. Ranges are sampled uniformly, once per example.
    speed_probability: float = 0.5  # chance per example of a tempo change
    speed_range: tuple[float, float] = (0.9, 1.1)  # tempo factor: 1.1 plays 10% faster, so 1/1.1 as many frames
    gain_db: tuple[float, float] = (-6.0, 6.0)  # dB, on every example (0 dB lies in the range)
    noise_probability: float = 0.5  # chance per example of added white noise
    noise_snr_db: tuple[float, float] = (5.0, 30.0)  # dB: mean mel power of the real frames over mean noise power
    time_masks: int = 2  # SpecAugment time stripes per example
    time_mask_max_frames: int = 20  # frames of 10 ms: each stripe spans 0 to 200 ms, uniformly
    freq_masks: int = 2  # SpecAugment frequency stripes per example
    freq_mask_max_bins: int = 8  # mel bands of N_MELS = 64: each stripe spans 0 to 8 bands, uniformly
    # faces: one draw per example, shared by all its frames, as a camera would move or light them
    crop_pixels: int = 4  # pixels of 48: shift along each axis by up to this, borders filled by reflection
    flip_probability: float = 0.5  # chance per example of a horizontal flip
    brightness: float = 0.2  # offset in [-b, b] added to pixel values in [0, 1]
    contrast: float = 0.2  # factor in [1 - c, 1 + c] on each crop's deviation from its own mean


def augment_mel(
    mel: torch.Tensor, mask: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed, gain, additive noise, then SpecAugment masks, each drawn per example.

    mel: (B, T, N_MELS) natural-log mel power, as from encoders.audio.log_mel
    mask: (B, T) bool, True on real frames, which come first in each row (as a batch pads them)
    returns mel (B, T, N_MELS) and mask (B, T): speed changes an example's number of real frames. Its frames
    beyond the batch's T are cut off, so the shapes, and the times that go with them, stay valid; frames that
    stop being real are zeroed, as padding is; input padding that stays padding is returned as it was.
    """
    if not config.enabled:
        return mel, mask
    batch, frames, _ = mel.shape
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(frames, device=mask.device) < lengths[:, None]):
        raise ValueError("augment_mel needs each row's real frames first and its padding after")

    mel, mask, lengths = _speed(mel, mask, lengths, config=config, generator=generator)
    gain = _uniform(config.gain_db, batch, generator=generator, device=mel.device) * DB_TO_LOG_POWER
    out = mel + rearrange(gain, "b -> b 1 1")
    out = _add_noise(out, mask, lengths, config=config, generator=generator)
    # log_mel floors power at LOG_FLOOR; a negative gain must not take a bin below what log_mel could give
    out = out.clamp(min=math.log(LOG_FLOOR))
    out = _spec_augment(out, mask, lengths, config=config, generator=generator)
    return torch.where(rearrange(mask, "b t -> b t 1"), out.to(mel.dtype), mel), mask


def _speed(
    mel: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resample the real frames of some examples in time: n frames at factor r become round(n / r).

    Linear interpolation of log-mel frames changes tempo but not pitch. True speed perturbation (resampling the
    waveform) would also scale every frequency by r; that is left out because pitch is itself an emotion cue and
    the mel axis is not a uniform frequency scale to shift along. Audio times no longer match the text and video
    after this, by up to |1 - 1/r| of the time from the clip's start: 0.33 s for a 3 s clip at r = 0.9, within
    the fusion model's attention window, so keep speed_probability at 0 when training on long recordings.
    """
    batch, frames, _ = mel.shape
    apply = _uniform((0.0, 1.0), batch, generator=generator, device=mel.device) < config.speed_probability
    factor = _uniform(config.speed_range, batch, generator=generator, device=mel.device)
    stretched = (lengths / factor).round().clamp(min=1).long()
    rows = torch.nonzero(apply & (lengths > 0)).flatten().tolist()
    if not rows:
        return mel, mask, lengths
    mel = mel.clone()
    lengths = lengths.clone()
    for row, n, m in zip(rows, lengths[rows].tolist(), stretched[rows].tolist()):
        # align_corners=False spaces the new frames exactly n / m old frames apart, like a changed hop length
        resampled = F.interpolate(rearrange(mel[row, :n], "t f -> 1 f t"), size=m, mode="linear", align_corners=False)
        kept = min(m, frames)
        mel[row, :kept] = rearrange(resampled[..., :kept], "1 f t -> t f")
        mel[row, kept:n] = 0
        lengths[row] = kept
    return mel, torch.arange(frames, device=mask.device) < lengths[:, None], lengths


def _add_noise(
    mel: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Add white Gaussian noise at a random SNR to some examples, in the mel power domain.

    Uncorrelated noise adds its power to the signal's in expectation, so this is the power-domain approximation of
    adding noise to the waveform: it leaves out the signal-noise cross term (zero mean, so it only adds spread)
    and the correlations that the analysis window and the frame overlap put between neighbouring FFT bins and
    frames. The noise's periodogram is drawn as exponential(1) per FFT bin (|X|^2 of a complex Gaussian) and put
    through the mel filterbank, which gives each band the fluctuation of the number of FFT bins it sums: about 2
    in the lowest bands, 14 in the highest. The SNR is measured on the mel spectrogram: the example's mean power
    over its real frames and all bands, over the noise's mean power.
    """
    batch, frames, _ = mel.shape
    apply = _uniform((0.0, 1.0), batch, generator=generator, device=mel.device) < config.noise_probability
    snr_db = _uniform(config.noise_snr_db, batch, generator=generator, device=mel.device)
    rows = torch.nonzero(apply).flatten()  # only these pay for drawing noise
    if len(rows) == 0:
        return mel
    power = mel[rows].exp()
    real = rearrange(mask[rows], "b t -> b t 1")
    signal = (power * real).sum((1, 2)) / (lengths[rows] * N_MELS).clamp(min=1)  # (R,)
    noise_power = signal * 10 ** (-snr_db[rows] / 10)
    bins = _WHITE_NOISE_TO_MEL.shape[0]
    # exponential(1) by inversion: several times faster on the CPU than Tensor.exponential_
    periodogram = -torch.log1p(-_uniform((0.0, 1.0), len(rows), frames, bins, generator=generator, device=mel.device))
    noise = periodogram.to(mel) @ _WHITE_NOISE_TO_MEL.to(mel)  # (R, T, N_MELS), mean 1
    return mel.index_put((rows,), torch.log(power + noise * rearrange(noise_power, "r -> r 1 1")))


def _spec_augment(
    mel: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """SpecAugment time and frequency masking (Park et al. 2019) inside the real frames.

    Masked bins get the example's mean log-mel over its real frames rather than 0: with log power floored at
    ln(1e-10) = -23, a 0 would be a loud bin, not a blank one.
    """
    _, frames, n_mels = mel.shape
    time = _stripes(lengths, config.time_masks, config.time_mask_max_frames, frames, generator=generator)
    freq = _stripes(
        torch.full_like(lengths, n_mels), config.freq_masks, config.freq_mask_max_bins, n_mels, generator=generator
    )
    masked = (rearrange(time, "b t -> b t 1") | rearrange(freq, "b f -> b 1 f")) & rearrange(mask, "b t -> b t 1")
    mean = (mel * rearrange(mask, "b t -> b t 1")).sum((1, 2)) / (lengths * n_mels).clamp(min=1)
    return torch.where(masked, rearrange(mean, "b -> b 1 1"), mel)


def _stripes(
    lengths: torch.Tensor, count: int, max_width: int, size: int, *, generator: torch.Generator
) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool: True inside `count` random stripes per row, each 0 to max_width wide
    (uniformly), placed uniformly within the row's first `length` positions."""
    batch = lengths.shape[0]
    device = lengths.device
    width = torch.randint(max_width + 1, (batch, count), generator=generator, device=generator.device).to(device)
    width = torch.minimum(width, lengths[:, None])
    room = lengths[:, None] - width  # latest start
    # floor(u * (room + 1)) is uniform over 0..room; the minimum guards float rounding of u next to 1
    start = torch.minimum((_uniform((0.0, 1.0), batch, count, generator=generator, device=device) * (room + 1)), room)
    start = start.floor()
    position = torch.arange(size, device=device)
    inside = (position >= start[..., None]) & (position < (start + width)[..., None])  # (B, count, size)
    return inside.any(1)


def augment_faces(
    pixels: torch.Tensor, mask: torch.Tensor, *, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random shift, horizontal flip, contrast and brightness of face crops, clamped to [0, 1].

    One transform is drawn per example and applied to all its frames, as one camera would film the clip.
    pixels: (B, T, 1, H, W) float in [0, 1], as from encoders.face.face_pixels; mask: (B, T) bool, True on real faces
    returns: (B, T, 1, H, W) in [0, 1]; crops where mask is False are returned as they were
    """
    if not config.enabled:
        return pixels
    batch, _, _, height, width = pixels.shape
    device = pixels.device
    pad = config.crop_pixels
    shift = torch.randint(2 * pad + 1, (2, batch), generator=generator, device=generator.device).to(device)
    flip = _uniform((0.0, 1.0), batch, generator=generator, device=device) < config.flip_probability
    contrast = _uniform((1 - config.contrast, 1 + config.contrast), batch, generator=generator, device=device)
    brightness = _uniform((-config.brightness, config.brightness), batch, generator=generator, device=device)

    # Shift: reflect-pad by `pad`, then cut a crop of the original size at the drawn offset; a flip reverses
    # the columns it reads. Reflection keeps the border looking like more of the face and background.
    padded = F.pad(rearrange(pixels, "b t c h w -> (b t) c h w"), (pad,) * 4, mode="reflect")
    padded = rearrange(padded, "(b t) c h w -> b t c h w", b=batch)
    rows = shift[0, :, None] + torch.arange(height, device=device)  # (B, H)
    cols = shift[1, :, None] + torch.arange(width, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    index = torch.arange(batch, device=device)
    out = padded[index[:, None, None], :, :, rows[:, :, None], cols[:, None, :]]  # indexed dims come first
    out = rearrange(out, "b h w t c -> b t c h w")

    contrast = rearrange(contrast, "b -> b 1 1 1 1")
    # x * f + (1 - f) * mean rather than (x - mean) * f + mean: exactly x when f = 1
    out = out * contrast + (1 - contrast) * out.mean((-3, -2, -1), keepdim=True)
    out = (out + rearrange(brightness, "b -> b 1 1 1 1")).clamp(0, 1)
    return torch.where(rearrange(mask, "b t -> b t 1 1 1"), out.to(pixels.dtype), pixels)


def _uniform(
    bounds: tuple[float, float], *shape: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniform in [low, high), drawn on the generator's device and moved to `device`."""
    low, high = bounds
    u = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return low + (high - low) * u


@dataclass
class FaceImageAugment:
    """The face expert's augmentation of single face images (FER2013 crops), one draw per image.

    Wider than the clip-level augment_faces: the expert trains for many passes over 26k still images, and
    rotation, zoom and erasing are the usual FER2013 levers against overfitting.
    """

    rotation_degrees: float = 10.0  # rotation in [-r, r]
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor, 1.1 shows the face 10% larger
    shift: float = 0.1  # translation in [-s, s] of the image side, along each axis
    flip_probability: float = 0.5
    brightness: float = 0.2  # offset in [-b, b] on pixel values in [0, 1]
    contrast: float = 0.2  # factor in [1 - c, 1 + c] on each image's deviation from its own mean
    erase_probability: float = 0.5  # chance of one erased rectangle (random erasing, Zhong et al. 2020)
    erase_side: tuple[float, float] = (0.1, 0.4)  # its sides, as fractions of the image side


def augment_face_images(pixels: torch.Tensor, *, config: FaceImageAugment, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, zoom, shift and flip (one bilinear resampling, borders reflected), then contrast,
    brightness and random erasing (set to the image mean).

    pixels: (B, 1, H, W) float in [0, 1]; returns (B, 1, H, W) in [0, 1]
    """
    batch, _, height, width = pixels.shape
    device = pixels.device

    def draw(bounds: tuple[float, float]) -> torch.Tensor:
        return _uniform(bounds, batch, generator=generator, device=device)

    angle = draw((-config.rotation_degrees, config.rotation_degrees)) * math.pi / 180
    zoom = draw(config.scale)
    flip = torch.where(draw((0.0, 1.0)) < config.flip_probability, -1.0, 1.0)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: the inverse of the drawn transform
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, draw((-config.shift, config.shift)) * 2], -1),
            torch.stack([sin * flip, cos, draw((-config.shift, config.shift)) * 2], -1),
        ],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    contrast = rearrange(draw((1 - config.contrast, 1 + config.contrast)), "b -> b 1 1 1")
    mean = out.mean((-3, -2, -1), keepdim=True)
    out = out * contrast + (1 - contrast) * mean
    out = out + rearrange(draw((-config.brightness, config.brightness)), "b -> b 1 1 1")

    erase = draw((0.0, 1.0)) < config.erase_probability
    side_h = (draw(config.erase_side) * height).long()
    side_w = (draw(config.erase_side) * width).long()
    top = (draw((0.0, 1.0)) * (height - side_h + 1)).long()
    left = (draw((0.0, 1.0)) * (width - side_w + 1)).long()
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside_rows = (rows >= top[:, None]) & (rows < (top + side_h)[:, None])  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + side_w)[:, None])  # (B, W)
    hole = (inside_rows[:, :, None] & inside_cols[:, None, :] & erase[:, None, None])[:, None]  # (B, 1, H, W)
    out = torch.where(hole, out.mean((-3, -2, -1), keepdim=True).expand_as(out), out)
    return out.clamp(0, 1)
