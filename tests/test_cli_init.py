"""`pointrl init` on tiny checkpoints in real on-disk layouts (Qwen2.5-VL and Qwen3-VL folders, a text LLM with a CLIP
vision folder, PointLLM and ULIP point-encoder checkpoints), the bad inputs it refuses in one line, and the GRCA paper's
preset (rl/configs/grca_paper.yaml) over the policy it builds."""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from policies import PointVLM, build_tiny_policy, build_tiny_qwen_vl, tiny_config
from policies.qwen_vl import QwenVLPointVLM
from rl.cli.main import main
from rl.config import policy_overrides
from rl.config_loading import load_config
from tests.test_policies_encoder import randomised_encoder, with_prefix

TINY_POINT = ["--point-heads", "4", "--point-groups", "32", "--group-size", "16"]  # tiny_config()'s encoder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny Qwen2.5-VL and Qwen3-VL folders, a tiny text LLM folder, a CLIP vision folder, and the source point encoder saved
    under PointLLM's `model.point_backbone.` prefix (safetensors) and ULIP's `module.point_encoder.` (torch)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("checkpoints")
    build_tiny_qwen_vl(root / "Qwen2.5-VL-tiny")
    build_tiny_qwen_vl(root / "Qwen3-VL-tiny", family="qwen3_vl")
    build_tiny_policy(out_dir=root / "tiny", seed=1)
    clip = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(clip).save_pretrained(root / "clip")
    source = randomised_encoder(tiny_config().point, seed=3)  # every tensor differs from a fresh encoder's
    save_file(with_prefix(source.state_dict(), "model.point_backbone."), root / "pointllm.safetensors")
    torch.save({"epoch": 1, "state_dict": with_prefix(source.state_dict(), "module.point_encoder.")}, root / "ulip.pt")
    return root, source.state_dict()


def init(*args: str) -> None:
    main(["init", *map(str, args)])


def assert_same_encoder(policy: PointVLM, state: dict) -> None:
    loaded = policy.point_encoder.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "folder, model",
    [("Qwen2.5-VL-tiny", "Qwen2_5_VLForConditionalGeneration"), ("Qwen3-VL-tiny", "Qwen3VLForConditionalGeneration")],
)
def test_init_from_a_qwen_vl_folder_and_a_pointllm_checkpoint(folders, tmp_path, capsys, folder, model):
    root, state = folders
    with pytest.warns(UserWarning, match="PointLLM projector not loaded"):  # the checkpoint holds no projector
        init("--llm", root / folder, "--point-encoder", root / "pointllm.safetensors", *TINY_POINT,
             "--projector", "linear", "--out", tmp_path / "policy")  # fmt: skip
    out = capsys.readouterr().out
    assert "a QwenVLPointVLM" in out and "(pointllm layout)" in out and model in out
    assert "point projector: linear" in out
    assert "point_encoder" in out and "frozen" in out and "trainable" in out
    policy = PointVLM.from_pretrained(tmp_path / "policy")
    assert isinstance(policy, QwenVLPointVLM) and policy.config.image.kind == "qwen_vl"
    assert type(policy.llm).__name__ == model
    assert [type(m).__name__ for m in policy.point_proj] == ["Linear"]  # GRCA eq. 4's linear map
    assert_same_encoder(policy, state)
    assert not any(p.requires_grad for p in policy.point_encoder.parameters())
    assert not any(p.requires_grad for p in policy.image_encoder.parameters())  # the Qwen tower stays frozen
    assert all(p.requires_grad for part in (policy.fusion, policy.point_proj) for p in part.parameters())


def test_init_from_a_text_llm_a_vision_folder_and_a_ulip_checkpoint_with_lora(folders, tmp_path, capsys):
    root, state = folders
    init("--llm", root / "tiny" / "llm", "--vision", root / "clip", "--point-encoder", root / "ulip.pt", *TINY_POINT,
         "--lora-r", "4", "--out", tmp_path / "policy")  # fmt: skip
    out = capsys.readouterr().out
    assert "(ulip layout)" in out and "LoRA rank 4" in out and str(root / "clip") in out
    policy = PointVLM.from_pretrained(tmp_path / "policy")
    assert type(policy) is PointVLM and policy.config.image.kind == "hf" and policy.config.image.width == 32
    assert (policy.config.llm_mode, policy.config.lora_r) == ("lora", 4)
    assert_same_encoder(policy, state)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing llm", "--llm {root}/nope: no such directory"),
        ("empty llm", "not a Hugging Face model folder (no config.json)"),
        ("vision llm", "model_type 'clip_vision_model' is neither a causal LM nor a Qwen-VL model ('qwen2_5_vl', "),
        (
            "qwen3-vl moe",
            "model_type 'qwen3_vl_moe' is neither a causal LM nor a Qwen-VL model ('qwen2_5_vl', 'qwen3_vl')",
        ),
        ("vision with qwen", "is a Qwen-VL folder, whose own vision tower makes the image tokens; drop --vision"),
        ("not a point checkpoint", "no known point-encoder layout"),
        ("heads the width refuses", "the point encoder's width 64 is not divisible by --point-heads 6"),
        ("out not empty", "is not empty: choose a new directory"),
    ],
)
def test_bad_input_is_one_line_and_status_2(folders, tmp_path, capsys, case, expected):
    root, _ = folders
    qwen, ckpt = root / "Qwen2.5-VL-tiny", root / "pointllm.safetensors"
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "moe").mkdir()  # its MoE language model is neither exported for vLLM nor tested
    (tmp_path / "moe" / "config.json").write_text('{"model_type": "qwen3_vl_moe"}')
    save_file({"model.layers.0.weight": torch.zeros(2)}, tmp_path / "llm_only.safetensors")
    args = {
        "missing llm": ["--llm", root / "nope"],
        "empty llm": ["--llm", tmp_path / "empty"],
        "vision llm": ["--llm", root / "clip"],
        "qwen3-vl moe": ["--llm", tmp_path / "moe"],
        "vision with qwen": ["--llm", root / "Qwen3-VL-tiny", "--vision", root / "clip"],
        "not a point checkpoint": ["--llm", qwen, "--point-encoder", tmp_path / "llm_only.safetensors"],
        "heads the width refuses": ["--llm", qwen, "--point-encoder", ckpt],  # the default 6 heads, width 64
        "out not empty": ["--llm", qwen, "--out", tmp_path / "full"],
    }[case]
    args += [] if "--out" in args else ["--out", tmp_path / "policy"]
    with pytest.raises(SystemExit) as exited:
        init(*args)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("pointrl init: error: ") and expected.format(root=root) in err
    assert not (tmp_path / "policy").exists()


def test_the_paper_preset_loads_and_its_freezing_holds_on_the_policy_init_builds(folders, tmp_path):
    root, _ = folders
    cfg = load_config("grca_paper.yaml")
    stage1 = load_config("grca_paper_sft.yaml")
    assert (cfg.algo.name, cfg.policy.train_point_encoder, cfg.policy.llm_mode) == ("grca", False, "full")
    assert cfg.policy.fusion == "camera"  # §3.1's geometry-guided cross-attention sees the camera
    assert (stage1.algo.name, stage1.rollout.prompts_per_step, stage1.policy) == ("sft", 128, cfg.policy)
    with pytest.warns(UserWarning, match="projector not loaded"):
        init("--llm", root / "Qwen2.5-VL-tiny", "--point-encoder", root / "pointllm.safetensors", *TINY_POINT,
             "--out", tmp_path / "policy")  # fmt: skip
    for preset in (cfg, dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, llm_mode="lora"))):
        policy = PointVLM.from_pretrained(tmp_path / "policy", **policy_overrides(preset))  # as the learner builds it
        trains = {name.split(".")[0]: p.requires_grad for name, p in policy.named_parameters() if p.requires_grad}
        frozen = {name.split(".")[0] for name, p in policy.named_parameters() if not p.requires_grad}
        assert {"point_encoder", "image_encoder"} <= frozen and not {"point_encoder", "image_encoder"} & set(trains)
        assert {"fusion", "point_proj", "llm"} <= set(trains)  # §4.2: the cross-attention and projector train
        assert policy.config.fusion == "camera" and policy.fusion.camera_log_scale.requires_grad
