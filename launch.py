"""Train, validate, test or export a 3D generation run: `python launch.py --config X.yaml --train`."""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import traceback

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def custom_module_dirs() -> list[str]:
    """`custom/` next to launch.py, plus the folders in THREESTUDIO_CUSTOM_PATH (os.pathsep-separated)."""
    dirs = [os.path.join(REPO_ROOT, "custom")]
    dirs += [d for d in os.environ.get("THREESTUDIO_CUSTOM_PATH", "").split(os.pathsep) if d]
    return dirs


def import_custom_modules(dirs: list[str]) -> list[str]:
    """Import every package (folder with __init__.py) and .py file in `dirs` so they can register modules.
    A failing one is reported and skipped; the others still load. Returns the names that failed."""
    failed = []
    for folder in dirs:
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
                module_name, init = name, os.path.join(path, "__init__.py")
            elif name.endswith(".py") and not name.startswith("_"):
                module_name, init = name[:-3], path
            else:
                continue
            try:
                spec = importlib.util.spec_from_file_location(
                    f"custom.{module_name}", init,
                    submodule_search_locations=[path] if os.path.isdir(path) else None,
                )
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            except Exception:
                sys.modules.pop(f"custom.{module_name}", None)
                failed.append(path)
                print(f"[threestudio] custom module {path} failed to import and is skipped:\n"
                      f"{traceback.format_exc()}", file=sys.stderr)
    return failed


def trial_dir_of_checkpoint(ckpt: str) -> str | None:
    """<trial>/ckpts/x.ckpt -> <trial>."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(folder) if os.path.basename(folder) == "ckpts" else None


# Trainer arguments launch.py sets itself
RESERVED_TRAINER_KEYS = {
    "callbacks": "set by launch.py (checkpointing, progress bar, Ctrl-C handling); not configurable.",
    "logger": "set by launch.py (TensorBoard and CSV logs in the trial folder); not configurable.",
    "plugins": "set by launch.py (atomic, weights-only checkpoint IO); not configurable.",
    "default_root_dir": "the trial folder is set by exp_root_dir, name, tag and use_timestamp.",
    "inference_mode": "launch.py evaluates with autograd available (analytic normals need gradients).",
}
RESERVED_CHECKPOINT_KEYS = {"dirpath": "checkpoints always go to <trial>/ckpts."}


def holds_a_run(folder: str) -> bool:
    return os.path.isdir(folder) and any(not n.startswith(".") for n in os.listdir(folder))


def choose_fresh_trial_dir(cfg) -> None:
    """A new training run never writes into a folder that holds another run: with a timestamp in the trial
    name (e.g. from a trial's parsed.yaml) it gets a new one; without, it stops with a message."""
    if not holds_a_run(cfg.trial_dir):
        return
    from datetime import datetime

    from threestudio.utils.config import ConfigError

    old = cfg.trial_dir
    last = os.path.join(old, "ckpts", "last.ckpt")
    if not cfg.use_timestamp:
        raise ConfigError(
            f"Trial folder '{old}' already holds a run, and a new run never overwrites it. Continue that run "
            f"with resume={last}, or start a new one with another tag=... (or use_timestamp=true).")
    stamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
    candidate, n = stamp, 1
    while holds_a_run(os.path.join(cfg.exp_dir, cfg.tag + candidate)):
        n += 1
        candidate = f"{stamp}-{n}"
    cfg.timestamp = candidate
    cfg.trial_name = cfg.tag + candidate
    cfg.trial_dir = os.path.join(cfg.exp_dir, cfg.trial_name)
    print(f"[threestudio] '{old}' already holds a run; this new run goes to '{cfg.trial_dir}'. "
          f"(To continue that run instead: resume={last})", file=sys.stderr)


def make_trial_dir(cfg) -> list[str]:
    """Create the trial folder; returns the folders created (removed again if the launch fails before
    any work). An uncreatable folder is a ConfigError naming exp_root_dir."""
    from threestudio.utils.config import ConfigError

    missing, folder = [], os.path.abspath(cfg.trial_dir)
    while not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    try:
        os.makedirs(cfg.trial_dir, exist_ok=True)
        probe = os.path.join(cfg.trial_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        remove_empty_dirs(missing)
        raise ConfigError(
            f"exp_root_dir={cfg.exp_root_dir}: cannot create or write the trial folder '{cfg.trial_dir}' "
            f"({e.strerror or e}). Set exp_root_dir to a writable folder.") from None
    return missing


def remove_empty_dirs(folders: list[str]) -> None:
    for folder in folders:  # deepest first
        try:
            os.rmdir(folder)
        except OSError:
            pass


def check_resume_file(path: str) -> dict:
    """Read a resume= checkpoint weights-only and check it is a Lightning training checkpoint."""
    from threestudio.utils.misc import CheckpointError, is_plain_state_dict, read_checkpoint

    ckpt = read_checkpoint(path, "resume checkpoint", mmap=True)
    if is_plain_state_dict(ckpt):
        raise CheckpointError(
            f"resume checkpoint '{path}' is a plain state dict, not a training checkpoint of launch.py (no "
            "optimizer state or step). To start a run from these weights use system.weights=<path> instead.")
    missing = [k for k in ("state_dict", "global_step") if k not in ckpt]
    if missing or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"resume checkpoint '{path}' is not a training checkpoint of launch.py: it has no "
            f"{' or '.join(missing) or 'state_dict'} (top-level keys: {', '.join(map(str, list(ckpt)[:8]))}).")
    return ckpt


def check_resume_fits(ckpt: dict, path: str, system, config_path: str) -> None:
    """The checkpoint's tensors must be exactly the system's (frozen priors aside); otherwise say which
    trial config belongs to it."""
    from threestudio.utils.misc import CheckpointError, compare_state_dicts

    expected = {k: v for k, v in system.state_dict().items() if not system._excluded(k)}
    found = {k: v for k, v in ckpt["state_dict"].items() if not system._excluded(k)}
    hint = ""
    trial = trial_dir_of_checkpoint(path)
    own_config = os.path.join(trial, "configs", "parsed.yaml") if trial else None
    if own_config and os.path.isfile(own_config) and os.path.abspath(own_config) != os.path.abspath(config_path):
        hint = f" Use the config of its trial: --config {own_config}"
    try:
        report = compare_state_dicts(expected, found, f"resume checkpoint '{path}'", f"the system of {config_path}")
    except CheckpointError as e:
        raise CheckpointError(f"{e}{hint}") from None
    if report.missing or report.unexpected:
        raise CheckpointError(
            f"resume checkpoint '{path}' was written by another configuration than {config_path}: "
            f"{report.describe()}.{hint or ' Use the config the checkpoint was trained with.'}")


def is_input_error(e: BaseException) -> bool:
    """Errors in what the user gave (config, data, checkpoint files): a message, no traceback."""
    from threestudio.data.multiview_sources import DatasetError
    from threestudio.utils.config import ConfigError
    from threestudio.utils.misc import CheckpointError

    # the model packages' own checkpoint errors (e.g. MVDreamCheckpointError) without importing them
    return (isinstance(e, (ConfigError, DatasetError, CheckpointError, FileNotFoundError))
            or type(e).__name__.endswith("CheckpointError"))


def describe_input_error(e: BaseException) -> str:
    name = type(e).__name__
    kind = "Checkpoint error" if "heckpoint" in name else "Data error" if name == "DatasetError" else "Configuration error"
    return f"{kind}: {e}"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="path to a YAML config (required)")
    parser.add_argument("--gpu", default=None,
                        help="GPU(s) to use, e.g. 0 or 0,1 (several = DDP); default: the first visible GPU. "
                             "Ignored without CUDA")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true")
    group.add_argument("--validate", action="store_true")
    group.add_argument("--test", action="store_true")
    group.add_argument("--export", action="store_true")
    group.add_argument("--preview", action="store_true",
                       help="MVDream configs: sample the prior's views for the prompt (same checkpoint and seed) "
                            "into <trial>/preview/ and stop")
    parser.add_argument("--preview-steps", type=int, default=50, help="DDIM steps of --preview")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--train_highres", action="store_true",
                        help="MVDream-threestudio's spelling of the second (256²) phase: --train with "
                             f"{HIGHRES_CONFIG}, resumed from the low-res run's resume=<ckpt>")
    args, extras = parser.parse_known_args(argv)
    if args.train_highres:
        apply_train_highres(parser, args, extras)
    elif args.config is None:
        parser.error("the following arguments are required: --config")
    return args, extras


HIGHRES_CONFIG = "configs/mvdream-sd21-highres.yaml"


def apply_train_highres(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """`--train --train_highres resume=<low-res ckpt>`: the MVDream seed's flag for the 256² phase."""
    if not args.train:
        parser.error("--train_highres goes with --train (it is the second training phase)")
    if args.config is not None and not os.path.basename(args.config).startswith("mvdream-sd21"):
        parser.error(f"--train_highres is the MVDream recipe's high-res phase; it does not apply to {args.config}")
    if not any(e.startswith("resume=") for e in extras):
        parser.error("--train_highres continues a low-res run: add resume=<trial>/ckpts/epoch=0-step=5000.ckpt")
    args.config = os.path.join(REPO_ROOT, HIGHRES_CONFIG)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(levelname)s %(name)s] %(message)s")
    if not args.verbose:
        for noisy in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.gpu is not None:
        # must be set before CUDA is initialised (torch.cuda.is_available() does that)
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    import torch

    n_gpus = 0
    if torch.cuda.is_available():
        n_gpus = len([g for g in args.gpu.split(",") if g.strip()]) if args.gpu is not None else 1

    import_custom_modules(custom_module_dirs())

    import pytorch_lightning as pl
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    import threestudio
    from threestudio.utils.callbacks import (
        AtomicCheckpointIO,
        GracefulInterruptCallback,
        ProgressBar,
        remove_orphan_temporaries,
        write_run_record,
    )
    from threestudio.utils.config import ConfigError, load_config, validate_call_options
    from threestudio.utils.misc import NonFiniteError, get_rank
    from threestudio.utils.oom import OutOfMemoryCheckpoint, handle_out_of_memory, is_out_of_memory
    from threestudio.utils.progress import ProgressFileCallback, update_progress

    stage = "train" if args.train else "validate" if args.validate else "test" if args.test else "export"
    rank = get_rank()
    made: list[str] = []
    try:
        cfg = load_config(args.config, cli_args=extras, n_gpus=max(n_gpus, 1))
        if args.preview:  # the prior's 4 views for the prompt, then stop (no trial record, no training)
            from threestudio.models.guidance.mvdream_preview import sample_preview

            print(f"Preview written to {sample_preview(cfg, steps=args.preview_steps)}")
            return 0
        trainer_options = validate_call_options(pl.Trainer, cfg.trainer, "trainer", RESERVED_TRAINER_KEYS)
        checkpoint_options = validate_call_options(ModelCheckpoint, cfg.checkpoint, "checkpoint",
                                                   RESERVED_CHECKPOINT_KEYS)
        resume_ckpt = check_resume_file(cfg.resume) if cfg.resume is not None else None
        if rank > 0 and os.environ.get("THREESTUDIO_TRIAL_DIR"):
            # DDP workers re-run this script: they must use the folder rank 0 chose
            cfg.trial_dir = os.environ["THREESTUDIO_TRIAL_DIR"]
            cfg.exp_dir, cfg.trial_name = os.path.dirname(cfg.trial_dir), os.path.basename(cfg.trial_dir)
        elif cfg.resume is not None and trial_dir_of_checkpoint(cfg.resume) is not None:
            trial = trial_dir_of_checkpoint(cfg.resume)  # continue in the checkpoint's own trial folder
            cfg.trial_dir, cfg.exp_dir, cfg.trial_name = trial, os.path.dirname(trial), os.path.basename(trial)
        elif args.train:
            choose_fresh_trial_dir(cfg)
        if not args.train and cfg.resume is None:
            print(f"[threestudio] --{stage} without resume=<checkpoint>: the model is untrained (as built from "
                  "the config and system.weights).", file=sys.stderr)
        if rank == 0:
            made = make_trial_dir(cfg)
        if n_gpus > 1:
            os.environ["THREESTUDIO_TRIAL_DIR"] = cfg.trial_dir
        ckpt_dir = os.path.join(cfg.trial_dir, "ckpts")
        interrupt = GracefulInterruptCallback()
        callbacks: list = [ProgressFileCallback(cfg.trial_dir)] if args.train else []
        out_of_memory = OutOfMemoryCheckpoint(cfg.trial_dir)
        if cfg.trainer.get("enable_progress_bar", True):
            callbacks.append(ProgressBar(refresh_rate=1))
        loggers: list = []
        if args.train:
            try:
                checkpointing = ModelCheckpoint(dirpath=ckpt_dir, **checkpoint_options)
            except Exception as e:  # noqa: BLE001 - Lightning's own validation of the values
                raise ConfigError(f"checkpoint: {e}") from None
            callbacks += [checkpointing, LearningRateMonitor(logging_interval="step"), interrupt, out_of_memory]
            loggers = [TensorBoardLogger(cfg.trial_dir, name="tb_logs"), CSVLogger(cfg.trial_dir, name="csv_logs")]
        trainer_kwargs = dict(trainer_options)
        if n_gpus > 0:
            trainer_kwargs.update(accelerator="gpu", devices=n_gpus, strategy="ddp" if n_gpus > 1 else "auto")
        else:
            trainer_kwargs.update(accelerator="cpu", devices=1)
        trainer_kwargs.setdefault("enable_model_summary", args.verbose)
        checkpoint_io = AtomicCheckpointIO()
        try:  # built before the data and the system: Lightning checks the values here, before any work
            trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, inference_mode=False,
                                 plugins=[checkpoint_io], **trainer_kwargs)
        except Exception as e:  # noqa: BLE001 - Lightning's MisconfigurationException, TypeError, ValueError
            raise ConfigError(f"trainer: {e}") from None
        pl.seed_everything(cfg.seed + rank, workers=True, verbose=False)
        dm = threestudio.find(cfg.data_type)(cfg.data)
        system = threestudio.find(cfg.system_type)(cfg.system)
        if args.train:
            system.configure_optimizers()  # a throwaway build: optimizer/scheduler settings fail here, not in fit
            system.check_training_inputs()  # e.g. a frozen prior's checkpoint, loaded only when training starts
        if resume_ckpt is not None:
            check_resume_fits(resume_ckpt, cfg.resume, system, args.config)
            del resume_ckpt
    except Exception as e:  # noqa: BLE001 - only input errors are caught, the rest re-raised
        remove_empty_dirs(made)
        if not is_input_error(e):
            raise
        print(describe_input_error(e), file=sys.stderr)
        return 2
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

    if rank == 0:
        if args.train:
            remove_orphan_temporaries(ckpt_dir)
        raw = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(extras))
        from datetime import datetime

        write_run_record(cfg.trial_dir, stage, raw, cfg, ["python", "launch.py", *argv],
                         datetime.now().strftime("%Y%m%d-%H%M%S"))

    try:
        if args.train:
            try:
                trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
            except Exception as e:  # noqa: BLE001 - out of memory: save a resumable checkpoint, name a preset
                if not is_out_of_memory(e):
                    raise
                return handle_out_of_memory(e, out_of_memory, cfg)
            # always leave a resumable last.ckpt, also after an interrupted run (unless it is already current)
            last = os.path.join(ckpt_dir, "last.ckpt")
            if checkpoint_io.written.get(os.path.abspath(last)) != trainer.global_step:
                trainer.save_checkpoint(last)
            trainer.test(system, datamodule=dm)
        elif args.validate:
            trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.test:
            trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.export:
            trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume, return_predictions=False)
    except NonFiniteError as e:
        print(f"Training diverged: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 - e.g. a lazily loaded prior's checkpoint; anything else re-raised
        if not is_input_error(e):
            raise
        print(describe_input_error(e), file=sys.stderr)
        return 2
    if trainer.is_global_zero and args.train:
        update_progress(cfg.trial_dir, stage="stopped" if interrupt.interrupted else "done",
                        message="stopped by the user; resume from ckpts/last.ckpt" if interrupt.interrupted else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
