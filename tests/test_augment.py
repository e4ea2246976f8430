"""Augmentation of cached encoder inputs: log-mel spectrograms (synthetic, and one real RAVDESS clip) and face crops."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from encoders.audio import N_MELS, log_mel
from encoders.face_detection import FACE_SIZE
from fusion.media.decoding import decode
from fusion.training.augment import AugmentConfig, augment_faces, augment_mel

# Every op off: tests switch on the one they check.
AUDIO_OFF = AugmentConfig(speed_probability=0.0, gain_db=(0.0, 0.0), noise_probability=0.0, time_masks=0, freq_masks=0)
FACES_OFF = AugmentConfig(crop_pixels=0, flip_probability=0.0, brightness=0.0, contrast=0.0)
LENGTHS = (300, 200, 0, 57)  # real frames per row; 0: a dropped or absent audio track


def mel_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random log-mels (B, T, N_MELS) around a speech-like level, real frames LENGTHS, padded with a marker value."""
    torch.manual_seed(0)
    frames = max(LENGTHS)
    mask = torch.arange(frames) < torch.tensor(LENGTHS)[:, None]
    mel = torch.randn(len(LENGTHS), frames, N_MELS) * 3 - 5
    return torch.where(mask[..., None], mel, torch.full_like(mel, 7.0)), mask


def face_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 6, 1, 48, 48) random crops; row 2 has no face at all, rows 1 and 3 miss some frames."""
    torch.manual_seed(0)
    pixels = torch.rand(4, 6, 1, FACE_SIZE, FACE_SIZE)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, ::2] = False
    mask[2] = False
    mask[3, 4:] = False
    return pixels, mask


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_output_different_seed_different():
    mel, mask = mel_batch()
    pixels, face_mask = face_batch()
    config = AugmentConfig(speed_probability=1.0, noise_probability=1.0)
    first, second, other = (augment_mel(mel, mask, config=config, generator=seeded(s)) for s in (1, 1, 2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    faces = [augment_faces(pixels, face_mask, config=AugmentConfig(), generator=seeded(s)) for s in (1, 1, 2)]
    assert torch.equal(faces[0], faces[1]) and not torch.equal(faces[0], faces[2])


def test_disabled_is_identity():
    mel, mask = mel_batch()
    pixels, face_mask = face_batch()
    off = AugmentConfig(enabled=False)
    out, out_mask = augment_mel(mel, mask, config=off, generator=seeded(0))
    assert out is mel and out_mask is mask
    assert augment_faces(pixels, face_mask, config=off, generator=seeded(0)) is pixels


def test_all_ops_off_is_identity():
    mel, mask = mel_batch()
    out, out_mask = augment_mel(mel, mask, config=AUDIO_OFF, generator=seeded(0))
    assert torch.equal(out, mel) and torch.equal(out_mask, mask)
    pixels, face_mask = face_batch()
    assert torch.equal(augment_faces(pixels, face_mask, config=FACES_OFF, generator=seeded(0)), pixels)


@pytest.mark.parametrize("speed", [0.0, 1.0])
def test_padding_untouched(speed):
    mel, mask = mel_batch()
    config = AugmentConfig(speed_probability=speed, noise_probability=1.0)
    for seed in range(5):
        out, out_mask = augment_mel(mel, mask, config=config, generator=seeded(seed))
        padding = ~mask & ~out_mask
        assert torch.equal(out[padding], mel[padding])
        assert not out_mask[2].any() and torch.equal(out[2], mel[2])  # an example with no audio
        assert torch.isfinite(out).all()
        if speed == 0.0:
            assert torch.equal(out_mask, mask)
        else:  # frames that stopped being real are zeroed, like pad_streams pads
            assert (out[mask & ~out_mask] == 0).all()


def test_gain_is_exact_in_log_power():
    mel, mask = mel_batch()
    config = replace(AUDIO_OFF, gain_db=(6.0, 6.0))
    out, _ = augment_mel(mel, mask, config=config, generator=seeded(0))
    shift = out[mask] - mel[mask]
    torch.testing.assert_close(shift, torch.full_like(shift, 6 * math.log(10) / 10), rtol=0, atol=2e-6)


def test_negative_gain_stops_at_the_log_floor():
    mel = torch.full((1, 10, N_MELS), math.log(1e-10))
    mask = torch.ones(1, 10, dtype=torch.bool)
    config = replace(AUDIO_OFF, gain_db=(-6.0, -6.0))
    out, _ = augment_mel(mel, mask, config=config, generator=seeded(0))
    torch.testing.assert_close(out, mel)


@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_noise_snr_on_real_speech(shared, snr_db):
    path = sorted((shared / "data/ravdess-speech-16k/Actor_01").glob("*.flac"))[0]
    speech = torch.from_numpy(log_mel(decode(path).audio))
    draws = 8
    frames = len(speech)
    mel = torch.zeros(draws, frames + 40, N_MELS)  # padded, so the mean must skip the padding
    mel[:, :frames] = speech
    mask = torch.arange(frames + 40) < frames
    mask = mask.expand(draws, -1)
    config = replace(AUDIO_OFF, noise_probability=1.0, noise_snr_db=(snr_db, snr_db))
    out, out_mask = augment_mel(mel, mask, config=config, generator=seeded(0))
    assert torch.equal(out_mask, mask) and torch.equal(out[~mask], mel[~mask])
    speech_power = speech.double().exp().mean()
    added = (out[:, :frames].double().exp() - mel[:, :frames].double().exp()).mean()
    assert abs(10 * math.log10(speech_power / added) - snr_db) < 0.25  # measured: 0.012 dB off
    # noise-like: the added power fluctuates from bin to bin, and never removes power
    assert (out[mask] >= mel[mask]).all()
    ratio = (out[:, :frames].double().exp() - mel[:, :frames].double().exp()) / added
    assert 0.3 < ratio.std() < 3


@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_speed_changes_the_real_length(factor):
    mel, mask = mel_batch()
    # a ramp in time, to see the stretch
    mel = torch.where(mask[..., None], torch.arange(300.0)[None, :, None].expand_as(mel), mel)
    config = replace(AUDIO_OFF, speed_probability=1.0, speed_range=(factor, factor))
    out, out_mask = augment_mel(mel, mask, config=config, generator=seeded(0))
    expected = [min(round(n / factor), 300) for n in LENGTHS]  # cut at the batch's 300 frames
    assert out_mask.sum(1).tolist() == expected
    assert torch.equal(out_mask, torch.arange(300) < torch.tensor(expected)[:, None])
    # new frame j samples old frame (j + 0.5) * n / m - 0.5, m = round(n / factor); away from the clamped ends
    j = torch.arange(10, 150, dtype=torch.float32)
    torch.testing.assert_close(out[1, 10:150, 0], (j + 0.5) * 200 / expected[1] - 0.5, rtol=0, atol=1e-3)


def test_spec_augment_time_masks():
    mel, mask = mel_batch()
    config = replace(AUDIO_OFF, time_masks=2, time_mask_max_frames=20)
    means = (mel * mask[..., None]).sum((1, 2)) / (mask.sum(1) * N_MELS).clamp(min=1)
    any_masked = False
    for seed in range(5):
        out, _ = augment_mel(mel, mask, config=config, generator=seeded(seed))
        changed = out != mel
        frames = changed.any(2)
        assert torch.equal(changed.all(2), frames)  # whole frames
        assert not (frames & ~mask).any()  # real frames only
        assert (frames.sum(1) <= config.time_masks * config.time_mask_max_frames).all()
        torch.testing.assert_close(out[changed], means[:, None, None].expand_as(out)[changed])
        any_masked |= bool(frames.any())
    assert any_masked


def test_spec_augment_frequency_masks():
    mel, mask = mel_batch()
    config = replace(AUDIO_OFF, freq_masks=2, freq_mask_max_bins=8)
    for seed in range(5):
        out, _ = augment_mel(mel, mask, config=config, generator=seeded(seed))
        changed = out != mel
        for row, n in enumerate(LENGTHS):
            if n == 0:
                continue
            bands = changed[row, :n].any(0)
            assert torch.equal(changed[row, :n].all(0), bands)  # whole bands, over every real frame
            assert bands.sum() <= config.freq_masks * config.freq_mask_max_bins
            assert not changed[row, n:].any()


def test_faces_stay_in_range_and_absent_faces_untouched():
    pixels, mask = face_batch()
    for seed in range(5):
        out = augment_faces(pixels, mask, config=AugmentConfig(brightness=0.5, contrast=0.5), generator=seeded(seed))
        assert out.shape == pixels.shape
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out[~mask], pixels[~mask])
        assert not torch.equal(out[mask], pixels[mask])


def test_face_flip():
    pixels, mask = face_batch()
    config = replace(FACES_OFF, flip_probability=1.0)
    out = augment_faces(pixels, mask, config=config, generator=seeded(0))
    assert torch.equal(out[mask], torch.flip(pixels, dims=[-1])[mask])


def test_face_shift_is_a_translation():
    pixels, mask = face_batch()
    pad = 4
    config = replace(FACES_OFF, crop_pixels=pad)
    out = augment_faces(pixels, mask, config=config, generator=seeded(3))
    shifts = set()
    for row in (0, 3):
        # the crop's interior is the input moved by one (dy, dx) for every frame of the example
        found = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(
                out[row, :4, :, pad:-pad, pad:-pad],
                pixels[row, :4, :, pad + dy : FACE_SIZE - pad + dy, pad + dx : FACE_SIZE - pad + dx],
            )
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert shifts != {(0, 0)}


def test_faces_share_one_transform_per_example():
    torch.manual_seed(0)
    still = torch.rand(3, 1, 1, FACE_SIZE, FACE_SIZE).expand(3, 5, 1, FACE_SIZE, FACE_SIZE)
    out = augment_faces(still, torch.ones(3, 5, dtype=torch.bool), config=AugmentConfig(), generator=seeded(0))
    # equal up to rounding: the crop mean of the contrast step is a float sum whose order can differ per frame
    torch.testing.assert_close(out, out[:, :1].expand_as(out), rtol=0, atol=1e-6)
    assert not torch.equal(out[0, 0], out[1, 0])


def test_dtype_is_kept():
    mel, mask = mel_batch()
    pixels, face_mask = face_batch()
    config = AugmentConfig(speed_probability=1.0, noise_probability=1.0)
    out, _ = augment_mel(mel.bfloat16(), mask, config=config, generator=seeded(0))
    faces = augment_faces(pixels.bfloat16(), face_mask, config=config, generator=seeded(0))
    assert out.dtype == faces.dtype == torch.bfloat16


def test_bad_audio_mask():
    mel, mask = mel_batch()
    mask = mask.clone()
    mask[0, 5] = False
    with pytest.raises(ValueError, match="real frames first"):
        augment_mel(mel, mask, config=AugmentConfig(), generator=seeded(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_data_with_a_cpu_generator_matches_the_cpu():
    mel, mask = mel_batch()
    pixels, face_mask = face_batch()
    config = AugmentConfig(speed_probability=1.0, noise_probability=1.0)
    out, out_mask = augment_mel(mel.cuda(), mask.cuda(), config=config, generator=seeded(0))
    cpu, cpu_mask = augment_mel(mel, mask, config=config, generator=seeded(0))
    assert out.device.type == "cuda" and torch.equal(out_mask.cpu(), cpu_mask)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-4)
    faces = augment_faces(pixels.cuda(), face_mask.cuda(), config=config, generator=seeded(0))
    torch.testing.assert_close(faces.cpu(), augment_faces(pixels, face_mask, config=config, generator=seeded(0)))
