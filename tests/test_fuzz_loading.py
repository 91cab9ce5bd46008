"""A short fuzz campaign of the checkpoint reader (the longer one:
``python -m mmpola.testing.fuzz --examples 3000``, see SECURITY.md)."""
import os

from mmpola.testing import fuzz


def test_seeds_load_as_inert_values(tmp_path):
    """The unmutated seeds (MMEngine resume file with message hub, released
    layout with its yacs config, converted file; zip and legacy) load."""
    failures, counts = fuzz.run(fuzz.seed_files(), str(tmp_path / 'in'),
                                str(tmp_path / 'PWNED'))
    assert not failures
    assert counts == {'value': 6}


def test_mutated_and_generated_files(tmp_path):
    """Each load ends in an inert value, UnsafeCheckpointError or
    CorruptCheckpointError naming the file; no crash, no hang, the
    payloads' marker never appears."""
    marker = str(tmp_path / 'PWNED')
    files = fuzz.mutated_files(150, seed=int(os.environ.get(
        'MMPOLA_FUZZ_SEED', 0)), marker=marker)
    files.update(fuzz.generated_streams(150, seed=0, marker=marker))
    failures, counts = fuzz.run(files, str(tmp_path / 'in'), marker)
    assert not failures, failures[:5]
    assert sum(counts.values()) == 300
    # the campaign reaches all three outcomes
    assert counts['unsafe'] and counts['corrupt'] and counts['value']


def test_the_harness_sees_a_payload_and_a_crash(tmp_path):
    """The harness fails when a marker appears or the worker dies."""
    marker = tmp_path / 'PWNED'
    marker.write_text('')
    failures, _ = fuzz.run({}, str(tmp_path / 'in'), str(marker))
    assert any('marker' in problem for _, problem in failures)
    os.remove(marker)
    bad = tmp_path / 'in2'
    bad.mkdir()
    (bad / 'sub').mkdir()  # a folder: safe_load raises FileNotFoundError
    failures, _ = fuzz.run({}, str(bad), str(marker))
    assert failures and 'FileNotFoundError' in failures[0][1]
