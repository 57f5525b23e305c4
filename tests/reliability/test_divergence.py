"""NaN/inf never reaches a checkpoint: stop (default) or skip-and-count, naming the step and the term."""
import glob
import os
import signal

import pytest
import torch

from conftest import REPO, snapshot


def _ckpts(trial):
    return {os.path.basename(p): torch.load(p, weights_only=True) for p in glob.glob(os.path.join(trial, "ckpts", "*.ckpt"))}


def test_nan_loss_stops_naming_step_and_term_and_keeps_good_checkpoints(launch, tmp_path):
    """Before: NaN went on into the parameters and was written to last.ckpt at the end."""
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "tag=nan", "system.nan_loss_from_step=4")
    assert code == 3, err
    assert "step 4: loss term 'fit' is not finite (NaN or inf)" in err
    assert "system.on_nonfinite=skip" in err
    (trial,) = glob.glob(str(tmp_path / "toy" / "nan@*"))
    ckpts = _ckpts(trial)
    assert sorted(ckpts) == ["epoch=0-step=3.ckpt", "last.ckpt"]  # nothing written after the NaN
    assert ckpts["last.ckpt"]["global_step"] == 3
    for ckpt in ckpts.values():
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not glob.glob(os.path.join(trial, "save", "*-test"))  # no test stage on a diverged run


def test_nan_loss_skip_mode_counts_and_finishes(launch, tmp_path):
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "tag=skip", "system.nan_loss_from_step=4",
                       "system.on_nonfinite=skip")
    assert code == 0, err
    assert "step 4: loss term 'fit' is not finite (NaN or inf): step skipped (1 so far" in err
    assert "step 5: loss term 'fit' is not finite (NaN or inf): step skipped (2 so far" in err
    (trial,) = glob.glob(str(tmp_path / "toy" / "skip@*"))
    last = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=True)
    assert last["global_step"] == 6 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert os.path.isfile(os.path.join(trial, "save", "it6-test", "view-0.png"))  # the test stage ran
    metrics = open(glob.glob(os.path.join(trial, "csv_logs", "*", "metrics.csv"))[0]).read()
    assert "train/nonfinite_skipped_steps" in metrics
    # past the limit the run stops
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "tag=limit", "system.nan_loss_from_step=4",
                       "system.on_nonfinite=skip", "system.max_nonfinite_skips=1")
    assert code == 3, err
    assert "step 5: loss term 'fit' is not finite (NaN or inf) after 1 skipped steps (system.max_nonfinite_skips)" in err


def test_nan_gradient_with_finite_loss_stops_naming_the_parameter(launch, tmp_path):
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "tag=grad", "system.nan_grad_from_step=2")
    assert code == 3, err
    assert "step 2: the gradient of field.weight is not finite" in err
    (trial,) = glob.glob(str(tmp_path / "toy" / "grad@*"))
    assert not glob.glob(os.path.join(trial, "ckpts", "*.ckpt"))


def test_nan_gradient_skip_mode_leaves_parameters_finite(launch, tmp_path):
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "tag=gskip", "system.nan_grad_from_step=5",
                       "system.on_nonfinite=skip")
    assert code == 0, err
    assert "step skipped (1 so far" in err
    (trial,) = glob.glob(str(tmp_path / "toy" / "gskip@*"))
    last = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_non_finite_weights_are_never_written_over_a_checkpoint(tmp_path):
    from threestudio.utils.callbacks import AtomicCheckpointIO
    from threestudio.utils.misc import NonFiniteError

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, path)
    before = snapshot(tmp_path)
    with pytest.raises(NonFiniteError, match=r"Not writing .*last.ckpt: 1 parameter tensors are NaN/inf \(w\) at step 4"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf")])}, "global_step": 4}, path)
    assert snapshot(tmp_path) == before


def test_bad_on_nonfinite_value_names_the_key(launch, tmp_path):
    code, err = launch("--train", f"exp_root_dir={tmp_path}", "system.on_nonfinite=ignore")
    assert code == 2 and "system.on_nonfinite must be one of ('stop', 'skip')" in err
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_collapsed_density_is_reported_at_validation(launch, tmp_path):
    """Before: an empty field was only discovered at export ("untrained or the checkpoint did not load")."""
    config = os.path.join(REPO, "configs", "reconstruction-example.yaml")
    tiny = [f"exp_root_dir={tmp_path}", "data.height=8", "data.width=8", "data.n_val_views=1",
            "data.eval_height=8", "data.eval_width=8", "system.renderer.num_samples_per_ray=8",
            "system.geometry.pos_encoding_config.log2_hashmap_size=8", "system.geometry.pos_encoding_config.n_levels=2",
            "system.renderer.occ_grid_resolution=8", "system.renderer.grid_prune=false"]
    code, err = launch("--validate", *tiny, "tag=dead", "system.geometry.density_bias=-100", config=config)
    assert code == 0, err
    assert "Validation at step 0: every view renders empty" in err and "density has collapsed" in err
    code, err = launch("--validate", *tiny, "tag=alive", config=config)
    assert code == 0, err
    assert "every view renders empty" not in err
