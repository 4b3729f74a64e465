"""The GRCA paper's recipe end to end on tiny checkpoints in real layouts: `pointrl init` from a Qwen-VL folder (the
paper's Qwen2.5-VL, and Qwen3-VL) and a PointLLM-layout point encoder (README's recipe), then GRCA steps with
rl/configs/grca_paper.yaml on a real local Ray cluster."""

import pytest
import torch
from safetensors.torch import save_file

from policies import PointVLM, build_tiny_qwen_vl, tiny_config
from policies.qwen_vl import QWEN_VL_TYPES
from rl.cli.main import main as pointrl
from rl.config_loading import load_config
from rl.runtime.driver import run_stage
from tests.test_cli_init import TINY_POINT
from tests.test_policies_encoder import randomised_encoder, with_prefix
from tests.test_rl_loop import SMALL, metrics

# SMALL's sizes, with the preset's frozen point encoder (SMALL trains the from-scratch one of the tiny policy) and short
# samples (a random policy's are noise at any length)
PAPER_SMALL = [*SMALL, "policy.train_point_encoder=false", "rollout.max_new_tokens=32"]


def changed_parts(a: PointVLM, b: PointVLM) -> set[str]:
    """The top-level parts (point_encoder, fusion, llm, ...) with a parameter that differs between a and b (of the
    parameters both have: GRCA's reconstruction head is fresh)."""
    params = dict(b.named_parameters())
    return {
        name.split(".")[0] for name, p in a.named_parameters() if name in params and not torch.equal(p, params[name])
    }


@pytest.mark.parametrize("family", QWEN_VL_TYPES)
def test_init_then_grca_train_the_trainable_parts_and_keep_the_frozen_ones(cluster, tmp_path, family):
    build_tiny_qwen_vl(tmp_path / "Qwen-VL-tiny", family=family)
    save_file(
        with_prefix(randomised_encoder(tiny_config().point).state_dict(), "model.point_backbone."),
        tmp_path / "pointllm.safetensors",
    )
    recipe = ["--llm", tmp_path / "Qwen-VL-tiny", "--point-encoder", tmp_path / "pointllm.safetensors"]
    pointrl(["init", *map(str, recipe), *TINY_POINT, "--projector", "linear", "--out", str(tmp_path / "init")])
    init = PointVLM.from_pretrained(tmp_path / "init", fusion="camera")  # as the preset's run loads it

    # The tiny random policy's samples all score 0, so the GRCA loss has no gradient; the patch-reconstruction loss
    # (recon.rl_weight) gives every trainable part one, which is what shows the freezing hold in the RL learner.
    grca = load_config(
        "grca_paper.yaml", [*PAPER_SMALL, f"run.dir={tmp_path / 'grca'}", "run.steps=2", "recon.rl_weight=1"]
    )
    final = PointVLM.from_pretrained(run_stage(grca, tmp_path / "init", tmp_path / "grca"))
    rows = metrics(tmp_path / "grca")
    assert [r["step"] for r in rows] == [1, 2] and [r["rollout/version"] for r in rows] == [0.0, 1.0]
    assert all(r["reward/missing"] == 0.0 for r in rows)
    # the cross-attention (fusion), the projector and the LLM learn; Point-BERT and the Qwen tower stay as loaded
    assert changed_parts(init, final) == {"fusion", "point_proj", "llm"}
    assert final.config.fusion == "camera"
    assert not torch.equal(init.fusion.camera_log_scale, final.fusion.camera_log_scale)  # the camera bias trains
