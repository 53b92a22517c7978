"""Deploy benchmark: control-loop timing, per-head inference latency and policy-server overhead.

    python benchmarks/deploy.py --checkpoint outputs/train/quickstart/checkpoints/last

Every figure is measured in the same run as its baseline (these machines are noisy):
- loop: the simulator driven at 30 and 50 Hz with asynchronous inference, against the plain
  synchronous loop (wait for each chunk) at the same rates. Tick period jitter p50/p99, the
  achieved control rate, and the share of ticks that got a policy action (the rest hold the arm).
- heads: latency per chunk of every registered action head on the checkpoint's backbone.
- server: the same policy in-process and through the WebSocket server on localhost.
Writes <out>.md, <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vla.action_heads.base import HeadConfig  # noqa: E402
from vla.checkpoint import count_parameters, load_policy  # noqa: E402
from vla.deploy.chunking import ScheduleConfig  # noqa: E402
from vla.deploy.loop import ControlLoop, EpisodeReport, LoopConfig, percentiles_ms  # noqa: E402
from vla.deploy.protocol import blank_observation  # noqa: E402
from vla.deploy.runner import LocalPolicy  # noqa: E402
from vla.policy import VLAPolicy  # noqa: E402
from vla.provenance import provenance  # noqa: E402
from vla.robot_io.sim import SimCamera, SimRobot, SimRobotConfig  # noqa: E402

TOKEN = "benchmark-token-0123"


def loop_run(policy: LocalPolicy, hz: float, async_inference: bool, ticks: int, task: str, rtc: bool = False) -> dict:
    """Run simulator episodes until `ticks` control steps have passed; timing over all of them."""
    robot = SimRobot(SimRobotConfig(task=task, image_size=policy.spec.image_size, camera=policy.spec.cameras[0],
                                    max_steps=500, control_hz=hz))
    robot.connect()
    camera = SimCamera(robot, policy.spec.cameras[0])
    config = LoopConfig(max_steps=ticks, async_inference=async_inference, schedule=ScheduleConfig(execute_steps=4),
                        rtc=rtc)
    loop = ControlLoop(robot, {camera.name: camera}, policy, config, robot.instruction)
    loop.start()
    jitter, latency, steps, held, elapsed = [], [], 0, 0, 0.0
    jumps, successes = [], []
    while steps < ticks:
        report: EpisodeReport = loop.run_episode()
        jumps.append(report.chunk_boundary_jump())
        successes.append(bool(report.success))
        periods = np.diff(report.tick_starts)
        jitter += list(np.abs(periods - loop.period))
        latency += report.inference_s
        steps += report.steps
        held += sum(report.holds.values())
        elapsed += report.tick_starts[-1] - report.tick_starts[0] + loop.period
    loop.close()
    robot.disconnect()
    return {"hz": hz, "async": async_inference, "rtc": rtc, "ticks": steps, "jitter_ms": percentiles_ms(jitter),
            "achieved_hz": steps / elapsed, "policy_action_share": 1 - held / steps,
            "inference_ms": percentiles_ms(latency), "episodes": len(successes), "successes": sum(successes),
            "jump_boundary": float(np.mean([j["boundary"] for j in jumps])),
            "jump_within": float(np.mean([j["within"] for j in jumps]))}


def loop_label(r: dict) -> str:
    return f"{r['hz']:.0f} Hz {'async' if r['async'] else 'sync'}{' + RTC' if r['rtc'] else ''}"


def head_latency(base, calls: int) -> list[dict]:
    """Latency per chunk of each registered head (untrained weights: latency does not depend on them)."""
    rows = []
    obs = blank_observation(LocalPolicy(base).spec)
    for name in sorted(HeadConfig.get_known_choices()):
        head = HeadConfig.get_choice_class(name)(horizon=base.config.head.horizon)
        config = dataclasses.replace(base.config, head=head)
        runner = LocalPolicy(VLAPolicy(config, base.normalizer, backbone=base.backbone))
        runner.warmup()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            runner.infer(obs)
            times.append(time.perf_counter() - start)
        rows.append({"head": name, "params_head": count_parameters(runner.policy.head), **percentiles_ms(times)})
    return rows


class NoOpPolicy:
    """Answers instantly with zeros: what is left of a round trip is the transport's own cost."""

    def __init__(self, spec):
        self.spec = spec

    def infer(self, obs) -> np.ndarray:
        return np.zeros((self.spec.horizon, self.spec.action_dims[obs.embodiment]), np.float32)


def server_overhead(policy: LocalPolicy, calls: int) -> dict:
    """In-process vs through the server, calls interleaved so machine noise hits both alike."""
    from vla.deploy.client import RemotePolicy
    from vla.deploy.server import PolicyServer

    result = {}
    for label, local in (("policy", policy), ("no_op", NoOpPolicy(policy.spec))):
        server = PolicyServer(local, TOKEN, port=0).start_in_thread()
        remote = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN)
        obs = blank_observation(policy.spec)
        remote.warmup()
        times = {"in_process": [], "server": []}
        for _ in range(calls):
            for name, runner in (("in_process", local), ("server", remote)):
                start = time.perf_counter()
                runner.infer(obs)
                times[name].append(time.perf_counter() - start)
        remote.close()
        server.shutdown()
        result[label] = {name: percentiles_ms(t) for name, t in times.items()}
    return result


def write_report(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [f"# Deploy benchmark\n\n{results['machine']}; checkpoint `{results['checkpoint']}`, "
             f"{results['num_inference_steps']} sampling steps, {results['ticks']} ticks per loop setting.\n",
             "## Control loop (simulator, receding horizon, 4 of 8 actions per chunk)\n",
             "| loop | jitter p50 (ms) | jitter p99 (ms) | achieved rate (Hz) | ticks with a policy action "
             "| chunk latency p50 / p99 (ms) | mean action jump at chunk joins / inside chunks | success |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["loop"]:
        lines.append(f"| {loop_label(r)} | {r['jitter_ms']['p50']:.3f} | {r['jitter_ms']['p99']:.3f} | "
                     f"{r['achieved_hz']:.1f} | {100 * r['policy_action_share']:.0f}% | "
                     f"{r['inference_ms']['p50']:.1f} / {r['inference_ms']['p99']:.1f} | "
                     f"{r['jump_boundary']:.3f} / {r['jump_within']:.3f} | {r['successes']}/{r['episodes']} |")
    lines += ["\n## Inference latency per chunk, by head (same backbone, default head configs)\n",
              "| head | head params | p50 (ms) | p99 (ms) |", "|---|---|---|---|"]
    lines += [f"| {h['head']} | {h['params_head'] / 1e6:.2f} M | {h['p50']:.1f} | {h['p99']:.1f} |"
              for h in results["heads"]]
    lines += ["\n## Policy server round trip (localhost, msgpack over WebSocket; calls interleaved)\n",
              "| policy | in-process p50 / p99 (ms) | through the server p50 / p99 (ms) |", "|---|---|---|"]
    for label, s in results["server"].items():
        lines.append(f"| {label} | {s['in_process']['p50']:.2f} / {s['in_process']['p99']:.2f} | "
                     f"{s['server']['p50']:.2f} / {s['server']['p99']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(results, out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    labels = [loop_label(r).replace(" + ", "\n+") for r in results["loop"]]
    ax1.bar(labels, [100 * r["policy_action_share"] for r in results["loop"]], color="#4878a8")
    ax1.set_ylabel("ticks with a policy action (%)")
    ax1.set_ylim(0, 125)
    ax1.tick_params(axis="x", labelsize=8)
    for i, r in enumerate(results["loop"]):
        ax1.text(i, 100 * r["policy_action_share"] + 2, f"{r['jitter_ms']['p99']:.1f} ms", ha="center", fontsize=8)
    ax1.set_title("control loop: async vs sync inference (label: tick jitter p99)")
    heads = results["heads"]
    ax2.bar([h["head"] for h in heads], [h["p50"] for h in heads], color="#6a9f58", label="p50")
    ax2.scatter([h["head"] for h in heads], [h["p99"] for h in heads], color="k", marker="_", s=400, label="p99")
    ax2.set_ylabel("latency per chunk (ms)")
    ax2.set_title("inference latency by head")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="outputs/train/quickstart/checkpoints/last")
    parser.add_argument("--ticks", type=int, default=600, help="control steps per loop setting")
    parser.add_argument("--calls", type=int, default=50, help="inferences per latency figure")
    parser.add_argument("--task", default="reach", help="short episodes, so success is over several of them")
    parser.add_argument("--num_inference_steps", type=int, default=10)
    parser.add_argument("--out", default="docs/results/deploy_benchmark")
    args = parser.parse_args()
    if not Path(args.checkpoint).exists():
        raise SystemExit(f"no checkpoint at {args.checkpoint}: run the quickstart first (bash scripts/quickstart.sh)")
    base = load_policy(args.checkpoint)
    policy = LocalPolicy(base, num_steps=args.num_inference_steps)
    record = provenance(vars(args))
    machine = record["machine"]
    results = {"provenance": record,
               "machine": f"{machine['cpu_cores']} CPU cores, {machine['torch_threads']} torch threads, "
                          f"device {machine['device']}; commit {str(record['commit'])[:10]}",
               "checkpoint": args.checkpoint, "num_inference_steps": args.num_inference_steps, "ticks": args.ticks,
               "loop": [loop_run(policy, hz, async_inference, args.ticks, args.task)
                        for hz in (30.0, 50.0) for async_inference in (True, False)]
                       + [loop_run(policy, hz, True, args.ticks, args.task, rtc=True) for hz in (30.0, 50.0)],
               "heads": head_latency(base, args.calls), "server": server_overhead(policy, args.calls)}
    write_report(results, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
