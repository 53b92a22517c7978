"""Exact resume: a run stopped anywhere and resumed logs the same losses as one uninterrupted run; a finished
run is reused, never extended or continued under other settings; checkpoints are written atomically."""

import dataclasses

import pytest

from vla.training import train as train_module
from vla.training.logging import read_metrics
from vla.training.train import TrainRunConfig, train

STEPS = 12


def run_config(cfg: TrainRunConfig, out, **changes) -> TrainRunConfig:
    train_cfg = dataclasses.replace(cfg.train, output_dir=str(out), steps=STEPS, batch_size=4, log_every=1,
                                    save_every=4, keep_last=2, resume=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(train_cfg, **changes))


class Killed(Exception):
    """Stands for the process dying mid-run."""


def die_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make module.name raise Killed on its `call`-th call (1-based)."""
    original, calls = getattr(module, name), [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise Killed(f"{name} call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


def steps_logged(out) -> list[int]:
    return [int(s) for s in read_metrics(out / "metrics.csv")["step"]]


@pytest.fixture(scope="module")
def uninterrupted(tiny_run_config, tmp_path_factory):
    """(output dir, metrics) of one uninterrupted 12-step run logging every step."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(run_config(tiny_run_config, out))
    return out, read_metrics(out / "metrics.csv")


def assert_same_run(out, reference: dict) -> None:
    assert steps_logged(out) == list(range(1, STEPS + 1))  # every step once: no rows replayed
    metrics = read_metrics(out / "metrics.csv")
    for key in ("loss", "lr", "grad_norm"):  # equal bit for bit on CPU; a GPU's kernels may differ in the last bits
        assert metrics[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-7), key


def test_streamed_run_in_a_worker_killed_and_resumed_equals_the_in_memory_run(uninterrupted, tiny_run_config, tmp_path,
                                                                            monkeypatch):
    """data.reader=stream with a DataLoader worker: killed mid-run and resumed, it logs what the uninterrupted
    in-memory run logged (the samples of a step depend on the seed, rank and step only)."""
    streamed = dataclasses.replace(tiny_run_config, data=dataclasses.replace(tiny_run_config.data, reader="stream",
                                                                             num_workers=1))
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 7)
        with pytest.raises(Killed):
            train(run_config(streamed, out))
    assert (out / "checkpoints" / "last").resolve().name == "step_0000004"
    train(run_config(streamed, out))
    assert_same_run(out, uninterrupted[1])


def test_run_killed_between_checkpoints_resumes_exactly(uninterrupted, tiny_run_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 10)  # dies drawing step 10's batch; last checkpoint: step 8
        with pytest.raises(Killed):
            train(run_config(tiny_run_config, out))
    assert (out / "checkpoints" / "last").resolve().name == "step_0000008"
    assert steps_logged(out) == list(range(1, 10))  # step 9 was logged, then lost with the process
    final = train(run_config(tiny_run_config, out))
    assert final.name == f"step_{STEPS:07d}"
    assert_same_run(out, uninterrupted[1])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step_0000008", "step_0000012"]


def test_crash_while_writing_a_checkpoint_keeps_last_complete(uninterrupted, tiny_run_config, tmp_path,
                                                              monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "save_rng_state", 2)  # step 8's checkpoint is half written
        with pytest.raises(Killed):
            train(run_config(tiny_run_config, out))
    assert (out / "checkpoints" / "last").resolve().name == "step_0000004"
    assert not (out / "checkpoints" / "step_0000008").exists()
    train(run_config(tiny_run_config, out))
    assert_same_run(out, uninterrupted[1])
    assert not list((out / "checkpoints").glob(".*tmp"))


def test_time_limit_stop_is_logged_recorded_and_resumes_on_the_same_schedule(uninterrupted, tiny_run_config,
                                                                             tmp_path, capsys):
    from vla.training.checkpoint import read_training_record

    out = tmp_path / "run"
    stopped = train(run_config(tiny_run_config, out, time_limit_s=1e-9))
    assert stopped.name == "step_0000001"
    assert "time limit train.time_limit_s=1e-09s reached at step 1 of 12" in capsys.readouterr().out
    history = read_training_record(stopped / "training_state")["history"]
    assert history == [{"step": 1, "event": "stopped by train.time_limit_s=1e-09"}]
    train(run_config(tiny_run_config, out))  # no limit now: time_limit_s does not change the run
    assert_same_run(out, uninterrupted[1])


def test_finished_run_is_reused_as_is(uninterrupted, tiny_run_config):
    out, metrics = uninterrupted
    last = (out / "checkpoints" / "last").resolve()
    written = {p: p.stat().st_mtime_ns for p in last.rglob("*")}
    assert train(run_config(tiny_run_config, out)) == last
    assert read_metrics(out / "metrics.csv") == metrics
    assert {p: p.stat().st_mtime_ns for p in last.rglob("*")} == written


@pytest.mark.parametrize("change, named", [
    ({"steps": 16}, "train.steps: 12 in the checkpoint, 16 now"),
    ({"seed": 1}, "train.seed: 0 in the checkpoint, 1 now"),
    ({"batch_size": 8}, "train.batch_size: 4 in the checkpoint, 8 now"),
])
def test_finished_run_is_not_continued_under_other_settings(uninterrupted, tiny_run_config, change, named):
    out, metrics = uninterrupted
    with pytest.raises(ValueError, match="finished run") as error:
        train(run_config(tiny_run_config, out, **change))
    assert named in str(error.value)
    assert "--train.output_dir" in str(error.value) and "--train.resume_with_changes=true" in str(error.value)
    assert read_metrics(out / "metrics.csv") == metrics


def test_stopped_run_is_not_resumed_under_other_data_or_model(tiny_run_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        die_on_call(patch, train_module, "make_batch", 6)
        with pytest.raises(Killed):
            train(run_config(tiny_run_config, out))
    data = dataclasses.replace(tiny_run_config.data, image_shift=0)
    with pytest.raises(ValueError, match="stopped at step 4.*data.image_shift: 2 in the checkpoint, 0 now"):
        train(run_config(dataclasses.replace(tiny_run_config, data=data), out))
    head = dataclasses.replace(tiny_run_config.model.head, depth=3)
    model = dataclasses.replace(tiny_run_config.model, head=head)
    with pytest.raises(ValueError, match="different model.*model.head.depth: 2 in the checkpoint, 3 now"):
        train(run_config(dataclasses.replace(tiny_run_config, model=model), out))
    with pytest.raises(ValueError, match="different model"):  # resume_with_changes cannot change the weights' shapes
        train(run_config(dataclasses.replace(tiny_run_config, model=model), out, resume_with_changes=True))


@pytest.mark.slow
def test_sigkilled_training_process_resumes_exactly(uninterrupted, tiny_run_config, tmp_path):
    """A real `vla-train` process killed with SIGKILL right after its first checkpoint, then resumed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from vla.config import to_yaml

    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(to_yaml(run_config(tiny_run_config, out)))
    process = subprocess.Popen([sys.executable, "-m", "vla.training.train", f"--config_path={tmp_path / 'run.yaml'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last, deadline = out / "checkpoints" / "last", time.time() + 240
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr[-2000:]}"
    assert last.resolve().name == "step_0000004"
    train(run_config(tiny_run_config, out))
    assert_same_run(out, uninterrupted[1])


def test_settings_added_to_vla_after_a_checkpoint_count_as_their_defaults(tiny_run_config, tmp_path):
    """A run record written before data.mixture / reader / color_jitter or a newer train.* field existed resumes under
    today's defaults; a setting that really differs is still named."""
    from vla.training.train import load_sources, run_differences, run_record

    sources = load_sources(tiny_run_config.model, tiny_run_config.data)
    current = run_record(tiny_run_config, sources, 1)
    older = {**current, "config": {k: v for k, v in current["config"].items()
                                   if k not in ("data.mixture", "data.reader", "data.color_jitter", "train.ema_decay")}}
    assert run_differences(older, current) == []
    changed = run_record(dataclasses.replace(tiny_run_config, data=dataclasses.replace(tiny_run_config.data,
                                                                                       color_jitter=0.2)), sources, 1)
    assert run_differences(older, changed) == ["data.color_jitter: 0.0 in the checkpoint, 0.2 now"]
