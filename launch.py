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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="path to a YAML config")
    parser.add_argument("--gpu", default=None,
                        help="GPU(s) to use, e.g. 0 or 0,1 (several = DDP); default: the first visible GPU. "
                             "Ignored without CUDA")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true")
    group.add_argument("--validate", action="store_true")
    group.add_argument("--test", action="store_true")
    group.add_argument("--export", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_known_args(argv)


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
        ConfigSnapshotCallback,
        GracefulInterruptCallback,
        ProgressBar,
    )
    from threestudio.utils.config import ConfigError, load_config
    from threestudio.utils.misc import get_rank

    try:
        cfg = load_config(args.config, cli_args=extras, n_gpus=max(n_gpus, 1))
        if cfg.resume is not None:
            if not os.path.isfile(cfg.resume):
                raise ConfigError(f"resume={cfg.resume}: no such checkpoint file.")
            trial = trial_dir_of_checkpoint(cfg.resume)
            if trial is not None:  # continue in the checkpoint's own trial folder
                cfg.trial_dir = trial
                cfg.exp_dir = os.path.dirname(trial)
                cfg.trial_name = os.path.basename(trial)
        pl.seed_everything(cfg.seed + get_rank(), workers=True, verbose=False)
        dm = threestudio.find(cfg.data_type)(cfg.data)
        system = threestudio.find(cfg.system_type)(cfg.system)
    except (ConfigError, ValueError) as e:
        print(f"Configuration error: {e}", file=sys.stderr)
        return 2
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

    raw = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(extras))
    interrupt = GracefulInterruptCallback()
    callbacks: list = [ConfigSnapshotCallback(cfg.trial_dir, raw, cfg, command=["python", "launch.py", *argv])]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar(refresh_rate=1))
    loggers: list = []
    if args.train:
        callbacks += [
            ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), **cfg.checkpoint),
            LearningRateMonitor(logging_interval="step"),
            interrupt,
        ]
        loggers = [TensorBoardLogger(cfg.trial_dir, name="tb_logs"), CSVLogger(cfg.trial_dir, name="csv_logs")]

    trainer_kwargs = dict(cfg.trainer)
    if n_gpus > 0:
        trainer_kwargs.update(accelerator="gpu", devices=n_gpus, strategy="ddp" if n_gpus > 1 else "auto")
    else:
        trainer_kwargs.update(accelerator="cpu", devices=1)
    trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, inference_mode=False,
                         plugins=[AtomicCheckpointIO()], enable_model_summary=args.verbose, **trainer_kwargs)

    if args.train:
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
        # always leave a resumable last.ckpt, also after an interrupted run
        trainer.save_checkpoint(os.path.join(cfg.trial_dir, "ckpts", "last.ckpt"))
        trainer.test(system, datamodule=dm)
    elif args.validate:
        trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
    elif args.test:
        trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
    elif args.export:
        trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume, return_predictions=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
