"""Fine-tuning learns: a short CPU run's loss curve against a recorded one (as torchtune's recipe
tests do), so a change that breaks learning, or silently changes what is learned, fails CI."""
import pytest

from stages.lib.snli import read_rows
from stages.lib.training import build_trainer
from tests.conftest import committed

# Recorded on the CPU with the pinned packages: the answer-token loss at steps 1, 2, ..., 10 of a
# run of 64 validation pairs, global batch 8 in micro-batches of 4, lr 1e-3, seed 42.
GOLDEN = [9.0297, 7.2672, 3.8983, 2.4305, 2.9177, 2.7056, 1.2294, 0.9608, 1.6257, 0.8181]
STEPS = 10


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_loss_curve_matches_the_recorded_one(model_params, snli_dir, tmp_path):
    rows = [r for r in read_rows(snli_dir / "validation.jsonl.gz") if r["label"] != -1][:64]
    train = committed("train", batch_size=8, micro_batch_size=4, max_steps=STEPS, lr=1e-3, logging_steps=1,
                      save_steps=10**6, warmup_ratio=0.0)
    trainer, _ = build_trainer(model_params, committed("prompt"), committed("lora"), train, rows, tmp_path)
    trainer.train()
    losses = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:2]) / 2  # it learned
    assert losses == pytest.approx(GOLDEN, rel=2e-2, abs=2e-2)
