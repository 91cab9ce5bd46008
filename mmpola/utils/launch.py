"""What ``tools/train.py`` and ``tools/test.py`` share.

The tools run configs of any of the three codebases (the config's
``default_scope`` says which: ``mmdet``, ``mmseg`` or ``mmpretrain``) on
MMEngine's Runner, with mmpola's modules registered and distributed runs
working on machines without CUDA (gloo instead of nccl).
"""
import argparse
import datetime
import importlib
import os
import os.path as osp
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmpola  # noqa: F401  (registers PolaPVT and PolaSwin)

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Arguments that train and test share (after their positional ones)."""
    parser.add_argument('--work-dir', help='directory for logs and outputs')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs, e.g. '
        'train_cfg.max_epochs=2 model.backbone.arch=small '
        'train_dataloader.dataset.pipeline.2.scale="(320,256)"')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read ``args.config`` and apply the options shared by the tools."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    _register_modules(cfg)
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        _use_cpu_distributed(cfg)
    return cfg


def build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _register_modules(cfg: Config) -> None:
    """Register mmpola and the config's codebase, also for saved configs.

    ``mmpola`` goes into ``custom_imports``, so the config the Runner dumps
    into the work dir builds the same model elsewhere.
    """
    custom = dict(cfg.get('custom_imports') or {})
    imports = custom.get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if 'mmpola' not in imports:
        custom.update(imports=imports + ['mmpola'],
                      allow_failed_imports=custom.get('allow_failed_imports',
                                                      False))
        cfg.custom_imports = custom
    scope = cfg.get('default_scope')
    if scope in SCOPES:
        importlib.import_module(f'{scope}.utils').register_all_modules(
            init_default_scope=False)


def _use_cpu_distributed(cfg: Config) -> None:
    """Make a multi-process run work without CUDA.

    MMEngine's ``init_dist`` pins a CUDA device and DDP gets
    ``device_ids=[LOCAL_RANK]``; neither works on CPU. So: gloo backend, the
    process group is started here (the Runner then skips ``init_dist``) and
    DDP gets ``device_ids=None``. Only the ``pytorch`` launcher (torchrun) is
    supported on CPU.
    """
    if cfg.launcher != 'pytorch':
        raise RuntimeError(f'launcher {cfg.launcher!r} needs CUDA; on a CPU '
                           'machine use --launcher pytorch (dist_train.sh)')
    old = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'nccl')
    if int(os.environ.get('RANK', 0)) == 0:
        print(f"CUDA is not available: distributed backend {old!r} -> 'gloo'",
              flush=True)
    cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
    if _sync_bn_to_bn(cfg.model) and int(os.environ.get('RANK', 0)) == 0:
        print('CUDA is not available: SyncBN -> BN (per-process statistics)',
              flush=True)
    if not dist.is_initialized():
        timeout = cfg.env_cfg.dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(
            timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend='gloo', **kwargs)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') == \
            'MMDistributedDataParallel':
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def shutdown_distributed() -> None:
    """Destroy the process group, if any, before the process exits
    (MMEngine leaves it: a gloo group torn down at interpreter exit can
    abort the process, "terminate called without an active exception",
    after the job itself has finished). After a successful job the ranks
    first meet at a barrier, so that no rank tears the group down while
    another is still in a collective; after an error (a rank may be gone)
    the group is destroyed at once."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def _sync_bn_to_bn(node) -> bool:
    """Replace ``SyncBN`` norm configs (CUDA only) by ``BN`` in place."""
    found = False
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            found = True
        for value in node.values():
            found |= _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= _sync_bn_to_bn(value)
    return found
