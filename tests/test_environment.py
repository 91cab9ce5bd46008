"""The installed stack: imports, compiled mmcv ops, Runner checkpoints."""
import os
import pickle

import pytest
import torch
import torch.nn as nn

import mmpola  # noqa: F401  (routes MMEngine's checkpoint loading)
from mmpola.utils.torch_load import safe_load


def test_openmmlab_packages_import():
    import mmcv
    import mmdet
    import mmengine
    import mmpretrain
    import mmseg
    assert mmcv.__version__ == '2.1.0'
    assert mmengine.__version__ == '0.10.7'
    assert (mmdet.__version__, mmseg.__version__,
            mmpretrain.__version__) == ('3.3.0', '1.2.2', '1.2.0')


def test_mmcv_nms_hand_checked():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 81 / 119 = 0.68: box 1 is suppressed at 0.5, kept at 0.7
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]


def test_mmcv_roi_align_hand_checked():
    from mmcv.ops import RoIAlign
    # feature value = x coordinate of the pixel centre offset: f(y, x) = x
    feat = torch.arange(8.).repeat(8, 1)[None, None]
    rois = torch.tensor([[0., 2., 2., 6., 6.]])  # box x in [2, 6]
    out = RoIAlign((2, 2), spatial_scale=1., sampling_ratio=2,
                   aligned=True)(feat, rois)
    # aligned: pixel centres at i + 0.5, so the bin centres x = 3 and 5
    # sample f = x - 0.5 -> bins average to 2.5 and 4.5
    torch.testing.assert_close(out[0, 0],
                               torch.tensor([[2.5, 4.5], [2.5, 4.5]]))


class _ToyModel(nn.Module):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, inputs, target, mode='loss'):
        return dict(loss=((self.fc(inputs).squeeze(-1) - target)**2).mean())


class _ToyData(torch.utils.data.Dataset):

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return dict(inputs=torch.full((2, ), float(i)), target=torch.ones(()))


def _runner(work_dir, max_iters, resume=False):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):

        def __init__(self):
            super().__init__()
            self.toy = _ToyModel()

        def forward(self, inputs, target, mode='loss'):
            return self.toy(inputs, target)

    return Runner(
        model=Model(), work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(), batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', interval=2, by_epoch=False)),
        resume=resume, randomness=dict(seed=0))


def test_runner_checkpoint_saves_and_resumes(tmp_path):
    first = _runner(tmp_path, max_iters=4)
    first.train()
    saved = first.model.toy.fc.weight.detach().clone()
    ckpt = tmp_path / 'iter_4.pth'
    assert ckpt.exists()
    # torch's default weights-only loader refuses the file
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    # mmpola's loader reads it, message hub included
    state = safe_load(str(ckpt))
    assert state['meta']['iter'] == 4
    assert 'log_scalars' in state['message_hub']

    second = _runner(tmp_path, max_iters=6, resume=True)
    second.load_or_resume()
    assert second.iter == 4  # resumes where the checkpoint was taken
    torch.testing.assert_close(second.model.toy.fc.weight.detach(), saved)
    second.train()
    assert second.iter == 6
    assert (tmp_path / 'iter_6.pth').exists()


class _Evil:

    def __reduce__(self):
        return (os.system, ('touch /tmp/mmpola_pwned', ))


def test_safe_load_never_runs_pickled_code(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': _Evil()}, path)
    if os.path.exists('/tmp/mmpola_pwned'):
        os.remove('/tmp/mmpola_pwned')
    with pytest.raises(pickle.UnpicklingError, match='not an allowed'):
        safe_load(str(path))
    ckpt = safe_load(str(path), unknown='placeholder')
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(1))
    assert not os.path.exists('/tmp/mmpola_pwned')
