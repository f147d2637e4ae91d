import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread: the tests run many tiny ops, several times faster single-threaded on 2 cores."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_text_run(tmp_path):
    """Run directory of a 2-step byte-level text run (attention + Canon AB), with checkpoints step_1 and step_2."""
    from archlab.config import load_config
    from archlab.train import train

    overrides = ["model.d_model=32", "model.n_layers=2", "model.mixer.n_heads=2", "model.canon=AB", "train.seq_len=32",
                 "train.batch_size=2", "train.steps=2", "train.ckpt_every=1", "train.keep_last=3", "train.eval_batches=1",
                 "data.max_bytes=100000", f"out_dir={tmp_path}", "name=run"]
    return train(load_config(None, overrides)).run_dir
