"""The Point-BERT encoder and the checkpoint loaders: each real layout, written to disk, loads to identical outputs."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from policies.checkpoints import load_point_checkpoint, read_state_dict
from policies.fusion import make_projector
from policies.point_encoder import PointBertEncoder, PointEncoderConfig

SMALL = PointEncoderConfig(num_groups=16, group_size=8, width=32, depth=2, heads=4, encoder_dims=48, point_dims=6)


def randomised_encoder(config=SMALL, seed=0) -> PointBertEncoder:
    """An encoder whose every tensor (BatchNorm running statistics included) differs from a fresh one."""
    torch.manual_seed(seed)
    encoder = PointBertEncoder(config)
    with torch.no_grad():
        for t in encoder.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.1 + (1.0 if t.dim() == 1 else 0.0))
    return encoder.eval()


def clouds(batch=3, n=128, seed=0):
    return torch.rand(batch, n, 6, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_for_xyz_and_xyz_rgb():
    for dims in (3, 6):
        config = PointEncoderConfig(16, 8, width=32, depth=1, heads=4, encoder_dims=48, point_dims=dims)
        tokens, centers = PointBertEncoder(config)(clouds())
        assert tokens.shape == (3, 17, 32) and centers.shape == (3, 16, 3)


def test_parameter_names_follow_point_bert():
    names = set(PointBertEncoder(SMALL).state_dict())
    for name in (
        "encoder.first_conv.0.weight",
        "encoder.first_conv.1.running_mean",
        "encoder.second_conv.3.weight",
        "reduce_dim.weight",
        "cls_token",
        "cls_pos",
        "pos_embed.0.weight",
        "pos_embed.2.weight",
        "blocks.blocks.0.attn.qkv.weight",
        "blocks.blocks.1.mlp.fc2.bias",
        "norm.weight",
    ):
        assert name in names, name
    assert "blocks.blocks.0.attn.qkv.bias" not in names  # Point-BERT's qkv has no bias


def test_a_sample_encodes_the_same_alone_and_in_a_batch_in_train_mode():
    encoder = randomised_encoder().train()  # BatchNorm must still use running statistics
    points = clouds(batch=4)
    together, _ = encoder(points)
    alone, _ = encoder(points[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-5)


def test_a_fresh_encoder_never_put_in_train_or_eval_mode_uses_and_keeps_its_running_statistics():
    encoder = PointBertEncoder(SMALL)  # as a policy just built or loaded leaves it: no train() or eval() call
    encoder.load_state_dict(randomised_encoder().state_dict())
    buffers = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    points = clouds(batch=4)
    together, _ = encoder(points)
    alone, _ = encoder(points[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-5)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in buffers.items())


def with_prefix(state, prefix):
    return {prefix + k: v.clone() for k, v in state.items()}


def assert_same_outputs(a, b):
    points = clouds()
    with torch.no_grad():
        assert torch.allclose(a(points)[0], b(points)[0], atol=1e-6)


def test_pointllm_layout_in_sharded_safetensors_with_projector(tmp_path):
    source = randomised_encoder(seed=1)
    projector = make_projector(32, (64, 96), 40)
    llm_noise = {"model.layers.0.self_attn.q_proj.weight": torch.randn(40, 40), "lm_head.weight": torch.randn(9, 40)}
    backbone = with_prefix(source.state_dict(), "model.point_backbone.")
    save_file({**backbone, **llm_noise}, tmp_path / "model-1.safetensors")
    save_file(with_prefix(projector.state_dict(), "model.point_proj."), tmp_path / "model-2.safetensors")
    target, target_proj = randomised_encoder(seed=2), make_projector(32, (64, 96), 40)
    assert load_point_checkpoint(tmp_path, target, target_proj) == "pointllm"
    assert_same_outputs(source, target)
    x = torch.randn(5, 32)
    assert torch.equal(projector(x), target_proj(x))


def test_pointllm_projector_of_another_llm_width_is_left_with_a_warning(tmp_path):
    source = randomised_encoder(seed=1)
    state = with_prefix(source.state_dict(), "model.point_backbone.")
    state.update({"model.point_proj.weight": torch.randn(4096, 32), "model.point_proj.bias": torch.randn(4096)})
    save_file(state, tmp_path / "pointllm.safetensors")
    target, target_proj = randomised_encoder(seed=2), make_projector(32, (), 40)
    before = {k: v.clone() for k, v in target_proj.state_dict().items()}
    with pytest.warns(UserWarning, match="projector not loaded"):
        load_point_checkpoint(tmp_path / "pointllm.safetensors", target, target_proj)
    assert all(torch.equal(before[k], v) for k, v in target_proj.state_dict().items())
    assert_same_outputs(source, target)


def test_ulip_layout(tmp_path):
    source = randomised_encoder(seed=3)
    state = {
        **with_prefix(source.state_dict(), "module.point_encoder."),
        "module.pc_projection": torch.randn(32, 8),
        "module.open_clip_model.logit_scale": torch.ones(()),
    }
    args = argparse.Namespace(model="ULIP_PointBERT", lr=3e-3)
    torch.save({"epoch": 3, "state_dict": state, "args": args, "best_acc1": 71.2}, tmp_path / "ulip.pt")
    target = randomised_encoder(seed=4)
    assert load_point_checkpoint(tmp_path / "ulip.pt", target) == "ulip"
    assert_same_outputs(source, target)


def test_point_bert_pretraining_layout_skips_training_heads(tmp_path):
    source = randomised_encoder(seed=5)
    state = {
        **with_prefix(source.state_dict(), "module.transformer_q."),
        **with_prefix(randomised_encoder(seed=6).state_dict(), "module.transformer_k."),
        "module.transformer_q.mask_token": torch.randn(1, 1, 32),
        "module.transformer_q.lm_head.weight": torch.randn(8192, 32),
        "module.transformer_q.cls_head.0.weight": torch.randn(8, 32),
        "module.dvae.codebook": torch.randn(8192, 256),
    }
    torch.save({"base_model": state, "optimizer": {"lr": 1e-3}}, tmp_path / "Point-BERT.pth")
    target = randomised_encoder(seed=7)
    assert load_point_checkpoint(tmp_path / "Point-BERT.pth", target) == "pointbert"
    assert_same_outputs(source, target)


def test_point_bert_fine_tuned_and_wrapped_layouts(tmp_path):
    for prefix in ("module.", "base_model."):
        source = randomised_encoder(seed=8)
        state = with_prefix(source.state_dict(), prefix)
        state[f"{prefix}cls_head_finetune.0.weight"] = torch.randn(256, 64)
        torch.save({"base_model": state}, tmp_path / "finetuned.bin")
        target = randomised_encoder(seed=9)
        assert load_point_checkpoint(tmp_path / "finetuned.bin", target) == "pointbert"
        assert_same_outputs(source, target)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    state = with_prefix(randomised_encoder().state_dict(), "module.point_encoder.")
    del state["module.point_encoder.norm.bias"]
    state["module.point_encoder.extra.weight"] = torch.zeros(2)
    state["module.point_encoder.reduce_dim.weight"] = torch.zeros(32, 7)
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_point_checkpoint(tmp_path / "bad.pt", randomised_encoder())
    message = str(err.value)
    assert "bad.pt" in message and "missing: norm.bias" in message and "unexpected: extra.weight" in message
    assert "reduce_dim.weight: checkpoint (32, 7) vs model (32, 48)" in message


def test_unknown_layout_and_missing_file_name_the_problem(tmp_path):
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no known point-encoder layout"):
        load_point_checkpoint(tmp_path / "other.safetensors", randomised_encoder())
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_state_dict(tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        read_state_dict(tmp_path / "junk.pt")
