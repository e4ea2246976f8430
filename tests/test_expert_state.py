"""Weights on disk: float16 and int8 storage of expert weights, read back as float32."""

import torch

from fusion.storage import INT8_MIN_ELEMENTS, INT8_SCALE, load_weights, save_weights


def test_int8_storage_keeps_large_weights_close_and_small_tensors_in_float16(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(64, 32, 3, 3),  # 18,432 elements: int8, one scale per output channel
        "conv.bias": torch.randn(64),  # small: float16
        "steps": torch.tensor(7),  # not floating: as it is
    }
    save_weights(tmp_path / "w.safetensors", tensors, dtype=torch.int8)
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "w.safetensors")
    assert stored["conv.weight"].dtype == torch.int8 and stored["conv.weight" + INT8_SCALE].shape == (64,)
    assert stored["conv.bias"].dtype == torch.float16 and tensors["conv.bias"].numel() < INT8_MIN_ELEMENTS
    loaded = load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == set(tensors) and loaded["conv.weight"].dtype == torch.float32
    step = tensors["conv.weight"].abs().amax(dim=(1, 2, 3)) / 127  # the rounding step of each output channel
    error = (loaded["conv.weight"] - tensors["conv.weight"]).abs().amax(dim=(1, 2, 3))
    assert (error <= step / 2 + 1e-6).all()
    torch.testing.assert_close(loaded["conv.bias"], tensors["conv.bias"], atol=1e-2, rtol=1e-3)
    assert loaded["steps"] == 7


def test_without_a_dtype_weights_come_back_exactly(tmp_path):
    tensors = {"w": torch.randn(300, 40)}
    save_weights(tmp_path / "w.safetensors", tensors)
    assert torch.equal(load_weights(tmp_path / "w.safetensors")["w"], tensors["w"])
