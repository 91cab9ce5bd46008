"""The model zoo index: ``model-index.yml`` imports every folder's metafile,
every config is listed by exactly one metafile, every listed path exists,
and every entry says which released weights it needs and where they are.
With the ``model-index`` package (openmim's parser) installed, the index
also loads through it."""
import glob
import os.path as osp
import re

import pytest
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INDEX = osp.join(ROOT, 'model-index.yml')
# configs/custom holds the examples of docs/custom_dataset.md, not zoo models
CONFIGS = sorted(
    osp.relpath(p, ROOT).replace(osp.sep, '/')
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if not osp.relpath(p, ROOT).replace(osp.sep, '/').startswith(
        'configs/custom/'))
METAFILES = sorted(
    osp.relpath(p, ROOT).replace(osp.sep, '/')
    for p in glob.glob(osp.join(ROOT, 'configs', '**', 'metafile.yml'),
                       recursive=True))
HUB = 'https://huggingface.co/ZachMeng/PolaFormer'
RELEASED = {
    'pola_pvt_tiny.pth', 'pola_pvt_small.pth', 'pola_pvt_medium.pth',
    'pola_pvt_large.pth', 'pola_swin_tiny.pth', 'pola_swin_small.pth',
    'pola_swin_base.pth', 'pola_swin_base_384.pth'
}


def _yaml(path):
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        return yaml.safe_load(f)


def _models():
    for meta in _yaml('model-index.yml')['Import']:
        for model in _yaml(meta)['Models']:
            yield meta, model


def test_index_imports_every_metafile():
    imports = _yaml('model-index.yml')['Import']
    assert sorted(imports) == METAFILES
    assert len(set(imports)) == len(imports)


def test_every_config_is_listed_once_and_every_path_exists():
    listed = []
    names = []
    for meta, model in _models():
        config = model['Config']
        assert osp.isfile(osp.join(ROOT, config)), (meta, config)
        assert osp.dirname(config) == osp.dirname(meta), (meta, config)
        assert model['Name'] == osp.splitext(osp.basename(config))[0]
        listed.append(config)
        names.append(model['Name'])
    assert sorted(listed) == CONFIGS
    assert len(set(names)) == len(names)
    for meta in METAFILES:
        for collection in _yaml(meta)['Collections']:
            assert osp.isfile(osp.join(ROOT, collection['README']))


def _init_checkpoint(config):
    """The backbone checkpoint a config loads, following ``_base_``."""
    path = osp.join(ROOT, config)
    while True:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        found = re.search(r"checkpoints/(pola_\w+\.pth)", text)
        if found:
            return found.group(1)
        base = re.search(r"_base_ = '\./([^']+)'", text)
        if not base:
            return None
        path = osp.join(osp.dirname(path), base.group(1))


def test_entries_name_the_released_weights():
    for meta, model in _models():
        assert 'Weights' in model, model['Name']  # none trained here yet
        if meta.startswith('configs/mmpretrain/'):
            # classifiers: converted from the released file of that model
            source = model['Converted From']
            assert source['Weights'] == HUB
            assert source['File'] in RELEASED
            assert source['Code'].startswith('https://github.com/')
        else:
            # detectors / segmentors: the released backbone they start from
            weights = model['Backbone Weights']
            assert weights['URL'] == HUB
            assert weights['File'] == _init_checkpoint(model['Config'])
            assert weights['File'] in RELEASED


def test_batch_sizes_in_metadata():
    """Metafiles state the real batch: 8 x the per-GPU batch in the name."""
    for meta, model in _models():
        name = model['Name']
        found = re.search(r'_8xb(\d+)[-_]', name)
        if not found:
            continue
        batch = 8 * int(found.group(1))
        stated = model.get('Metadata', {}).get('Batch Size')
        if stated is None:
            stated = next(c for c in _yaml(meta)['Collections']
                          if c['Name'] == model['In Collection']
                          )['Metadata']['Batch Size']
        assert stated == batch, name


def test_modelindex_loads_the_index():
    modelindex = pytest.importorskip('modelindex')
    index = modelindex.load(INDEX)
    names = {m.name for m in index.models}
    assert len(names) == len(CONFIGS)
    for model in index.models:
        assert osp.isfile(osp.join(ROOT, model.config))
